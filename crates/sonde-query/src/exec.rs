//! `SondeScanExec`: the leaf of every plan over a Sonde table. It runs one storage
//! scan (head and segments, pruned by time and by the label index, projected
//! fields only) on the blocking pool, charges the rows to the query's memory pool,
//! and streams them in batches. Its metrics — segments pruned by time and by the
//! index, segments read, bytes read of segment bytes, series, rows — appear in
//! `EXPLAIN ANALYZE`.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;
use sonde_storage::{ScanRequest, Storage};

/// Rows per output batch.
const BATCH_ROWS: usize = 8192;

#[derive(Debug)]
pub struct SondeScanExec {
    storage: Arc<Storage>,
    tenant: String,
    req: ScanRequest,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SondeScanExec {
    pub fn new(storage: Arc<Storage>, tenant: String, req: ScanRequest, schema: SchemaRef) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        SondeScanExec {
            storage,
            tenant,
            req,
            schema,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

fn bound(t: i64) -> String {
    match t {
        i64::MIN => "-inf".into(),
        i64::MAX => "+inf".into(),
        t => t.to_string(),
    }
}

impl DisplayAs for SondeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let matchers: Vec<String> = self.req.matchers.iter().map(|m| m.to_string()).collect();
        write!(
            f,
            "SondeScanExec: table={}, time=[{}, {}], matchers=[{}], fields=[{}]",
            self.req.table,
            bound(self.req.start),
            bound(self.req.end),
            matchers.join(", "),
            self.req.fields.as_deref().unwrap_or_default().join(", ")
        )
    }
}

impl ExecutionPlan for SondeScanExec {
    fn name(&self) -> &'static str {
        "SondeScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let counter =
            |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, partition);
        let m = [
            counter("segments_total"),
            counter("segments_pruned_by_time"),
            counter("segments_pruned_by_index"),
            counter("segments_read"),
            counter("segment_bytes"),
            counter("bytes_read"),
            counter("series"),
            counter("rows"),
        ];
        let storage = self.storage.clone();
        let tenant = self.tenant.clone();
        let req = self.req.clone();
        let schema = self.schema.clone();
        let reservation = MemoryConsumer::new(format!("SondeScanExec[{}]", self.req.table))
            .register(context.memory_pool());
        let out_schema = schema.clone();
        let batches = futures::stream::once(async move {
            let batch = tokio::task::spawn_blocking(move || -> DfResult<RecordBatch> {
                let out = storage
                    .scan(&tenant, &req)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let s = &out.stats;
                for (c, v) in m.iter().zip([
                    s.segments_total,
                    s.segments_pruned_by_time,
                    s.segments_pruned_by_index,
                    s.segments_read,
                    s.segment_bytes as usize,
                    s.bytes_read as usize,
                    s.series,
                    s.rows,
                ]) {
                    c.add(v);
                }
                let batch = out
                    .to_record_batch()
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                project(&batch, &schema)
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
            // The rows live as long as the query may hold them: charge them to the
            // query's memory pool, so a scan past the limit is a clear error.
            reservation.try_grow(batch.get_array_memory_size())?;
            let n = batch.num_rows();
            let parts: Vec<DfResult<RecordBatch>> = (0..n.div_ceil(BATCH_ROWS).max(1))
                .map(|i| {
                    let start = i * BATCH_ROWS;
                    Ok(batch.slice(start, BATCH_ROWS.min(n - start)))
                })
                .collect();
            // Keep the reservation until the stream is dropped.
            let keep = reservation;
            DfResult::Ok(futures::stream::iter(parts).map(move |b| {
                let _ = &keep;
                b
            }))
        })
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, batches)))
    }
}

/// The scanned batch in the plan's column order; columns the scan did not produce
/// (a tag no series in range carries) are null.
fn project(batch: &RecordBatch, schema: &SchemaRef) -> DfResult<RecordBatch> {
    let n = batch.num_rows();
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.schema().index_of(f.name()) {
            Ok(i) if batch.column(i).data_type() == f.data_type() => batch.column(i).clone(),
            Ok(i) => arrow::compute::cast(batch.column(i), f.data_type())
                .unwrap_or_else(|_| new_null_array(f.data_type(), n)),
            Err(_) => new_null_array(f.data_type(), n),
        })
        .collect();
    let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &opts,
    )?)
}
