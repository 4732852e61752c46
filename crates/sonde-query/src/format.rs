//! Query results as bytes: JSON rows, CSV, Arrow IPC stream, an aligned text table.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;

/// JSON: an array of objects, one per row (nulls omitted as keys).
pub fn json(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    w.write_batches(&refs)?;
    w.finish()?;
    let mut out = w.into_inner();
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}

/// CSV with a header row.
pub fn csv(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(Vec::new());
    if batches.is_empty() {
        // Still print the header.
        w.write(&RecordBatch::new_empty(schema.clone()))?;
    }
    for b in batches {
        w.write(b)?;
    }
    Ok(w.into_inner())
}

/// An Arrow IPC stream (schema, then the batches).
pub fn arrow_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    w.into_inner()
}

/// An aligned text table, as `sonde sql` prints it.
pub fn table(batches: &[RecordBatch]) -> Result<String, ArrowError> {
    Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}

/// An aligned text table from an Arrow IPC stream (what `sonde sql` receives).
pub fn table_from_ipc(bytes: &[u8]) -> Result<String, ArrowError> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    table(&batches)
}

/// Column types and rows as text (NULL for nulls) from an Arrow IPC stream, for
/// test drivers such as sqllogictest.
pub fn rows_from_ipc(
    bytes: &[u8],
) -> Result<(Vec<arrow::datatypes::DataType>, Vec<Vec<String>>), ArrowError> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let types = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    let opts = arrow::util::display::FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in reader {
        let b = b?;
        let fmts = b
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    Ok((types, rows))
}
