//! Counter-aware aggregates for cumulative counters:
//!
//! - `increase(value, time)`: how much a counter grew over the group's rows, in time
//!   order. A drop means the counter restarted from zero (a process restart), so
//!   the value after the drop counts in full — as Prometheus' `increase` does,
//!   without its extrapolation to the window edges.
//! - `rate(value, time)`: `increase` divided by the seconds between the group's
//!   first and last sample (NULL with fewer than two samples).
//!
//! Use them per series (`GROUP BY` every tag, then sum across series): a counter's
//! resets are a property of one series.
//!
//! Design decision: partial aggregates cannot be merged from summaries (whether a
//! drop is a reset depends on the neighbours, which may sit in another partition),
//! so the accumulator keeps the group's (time, value) points and orders them when
//! it evaluates. Memory is charged to the query's pool like any aggregate state.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, ListArray};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

/// Which counter function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Increase,
    Rate,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CounterFn {
    kind: Kind,
    signature: Signature,
}

/// `increase(value, time)`.
pub fn increase() -> AggregateUDF {
    AggregateUDF::from(CounterFn {
        kind: Kind::Increase,
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// `rate(value, time)`.
pub fn rate() -> AggregateUDF {
    AggregateUDF::from(CounterFn {
        kind: Kind::Rate,
        signature: Signature::any(2, Volatility::Immutable),
    })
}

impl AggregateUDFImpl for CounterFn {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Increase => "increase",
            Kind::Rate => "rate",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if !args[0].is_numeric() {
            return datafusion::common::plan_err!(
                "{}(value, time): value must be numeric, got {}",
                self.name(),
                args[0]
            );
        }
        if !matches!(args[1], DataType::Timestamp(..) | DataType::Int64) {
            return datafusion::common::plan_err!(
                "{}(value, time): time must be a timestamp, got {}",
                self.name(),
                args[1]
            );
        }
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs<'_>) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(CounterAcc {
            kind: self.kind,
            points: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> DfResult<Vec<FieldRef>> {
        let list = |name: &str, ty: DataType| -> FieldRef {
            Arc::new(Field::new(
                format!("{}[{name}]", args.name),
                DataType::List(Arc::new(Field::new_list_field(ty, true))),
                true,
            ))
        };
        Ok(vec![
            list("times", DataType::Int64),
            list("values", DataType::Float64),
        ])
    }
}

#[derive(Debug)]
struct CounterAcc {
    kind: Kind,
    /// (time ms, value).
    points: Vec<(i64, f64)>,
}

fn as_i64(a: &ArrayRef) -> DfResult<Int64Array> {
    let a = match a.data_type() {
        DataType::Timestamp(..) => {
            // Normalise to milliseconds.
            let ms = cast(
                a,
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            )?;
            cast(&ms, &DataType::Int64)?
        }
        _ => cast(a, &DataType::Int64)?,
    };
    Ok(a.as_primitive::<Int64Type>().clone())
}

impl Accumulator for CounterAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let v = cast(&values[0], &DataType::Float64)?;
        let v = v.as_primitive::<Float64Type>();
        let t = as_i64(&values[1])?;
        for i in 0..v.len() {
            if v.is_valid(i) && t.is_valid(i) {
                self.points.push((t.value(i), v.value(i)));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        if self.points.len() < 2 {
            return Ok(ScalarValue::Float64(match self.kind {
                Kind::Increase if self.points.len() == 1 => Some(0.0),
                _ => None,
            }));
        }
        self.points.sort_by_key(|p| p.0);
        let mut inc = 0.0;
        for w in self.points.windows(2) {
            let (prev, cur) = (w[0].1, w[1].1);
            inc += if cur >= prev { cur - prev } else { cur };
        }
        Ok(ScalarValue::Float64(Some(match self.kind {
            Kind::Increase => inc,
            Kind::Rate => {
                let secs = (self.points[self.points.len() - 1].0 - self.points[0].0) as f64 / 1e3;
                if secs <= 0.0 {
                    return Ok(ScalarValue::Float64(None));
                }
                inc / secs
            }
        })))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.points.capacity() * std::mem::size_of::<(i64, f64)>()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let times = Int64Array::from_iter_values(self.points.iter().map(|p| p.0));
        let values = Float64Array::from_iter_values(self.points.iter().map(|p| p.1));
        let list = |a: ArrayRef, ty: DataType| -> DfResult<ScalarValue> {
            let l = ListArray::try_new(
                Arc::new(Field::new_list_field(ty, true)),
                OffsetBuffer::from_lengths([a.len()]),
                a,
                None,
            )?;
            Ok(ScalarValue::List(Arc::new(l)))
        };
        Ok(vec![
            list(Arc::new(times), DataType::Int64)?,
            list(Arc::new(values), DataType::Float64)?,
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let times = states[0].as_list::<i32>();
        let values = states[1].as_list::<i32>();
        for i in 0..times.len() {
            if times.is_null(i) || values.is_null(i) {
                continue;
            }
            let t = times.value(i);
            let v = values.value(i);
            let t = t.as_primitive::<Int64Type>();
            let v = v.as_primitive::<Float64Type>();
            for j in 0..t.len() {
                self.points.push((t.value(j), v.value(j)));
            }
        }
        Ok(())
    }
}

/// `sketch_quantile(sketch, q)`: the `q` quantile (0..=1) of all values of the
/// sketches of the group — the `f_sketch` columns of event-table tiers
/// (`llm_calls_1h.duration_seconds_sketch`), within 1 % of the exact order
/// statistic of rank `floor(q (n − 1))`. NULL without values. The SQL tier rule turns
/// `approx_percentile_cont` over an event table into this.
pub fn sketch_quantile() -> AggregateUDF {
    AggregateUDF::from(SketchQuantile {
        signature: Signature::any(2, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchQuantile {
    signature: Signature,
}

impl AggregateUDFImpl for SketchQuantile {
    fn name(&self) -> &str {
        "sketch_quantile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if !matches!(args[0], DataType::Binary | DataType::Null) {
            return datafusion::common::plan_err!(
                "sketch_quantile(sketch, q): sketch must be a sketch column (binary), got {}",
                args[0]
            );
        }
        if !args[1].is_numeric() {
            return datafusion::common::plan_err!(
                "sketch_quantile(sketch, q): q must be a number between 0 and 1, got {}",
                args[1]
            );
        }
        Ok(DataType::Float64)
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> DfResult<Box<dyn Accumulator>> {
        // A constant evaluates without input rows.
        let empty =
            arrow::array::RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()));
        let q = args
            .exprs
            .get(1)
            .and_then(|e| e.evaluate(&empty).ok())
            .and_then(|v| match v {
                datafusion::logical_expr::ColumnarValue::Scalar(s) => {
                    s.cast_to(&DataType::Float64).ok()
                }
                _ => None,
            });
        let q = match q {
            Some(ScalarValue::Float64(Some(q))) if (0.0..=1.0).contains(&q) => q,
            _ => {
                return datafusion::common::plan_err!(
                    "sketch_quantile(sketch, q): q must be a constant between 0 and 1"
                );
            }
        };
        Ok(Box::new(SketchAcc {
            q,
            sketch: sonde_storage::sketch::Sketch::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[sketch]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

#[derive(Debug)]
struct SketchAcc {
    q: f64,
    sketch: sonde_storage::sketch::Sketch,
}

impl SketchAcc {
    fn add_all(&mut self, a: &ArrayRef) -> DfResult<()> {
        if a.data_type() == &DataType::Null {
            return Ok(());
        }
        let b = a.as_binary::<i32>();
        for i in 0..b.len() {
            if b.is_valid(i) && !b.value(i).is_empty() {
                let s = sonde_storage::sketch::Sketch::decode(b.value(i))
                    .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
                self.sketch.merge(&s);
            }
        }
        Ok(())
    }
}

impl Accumulator for SketchAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.add_all(&values[0])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Float64(self.sketch.quantile(self.q)))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.sketch.bins() * 48
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.sketch.encode()))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.add_all(&states[0])
    }
}
