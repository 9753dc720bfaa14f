//! `crmsync export --entity E --format jsonl|csv [--out F]`: from the store, or, while a daemon holds
//! it, page by page from the daemon's API (the same records either way).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use crmsync_connectors::canonical::{Entity, Record};

use super::load_config;
use super::operate::Backend;
use crate::cli::{ExportArgs, ExportFormat};
use crate::queries::{ListQuery, MAX_LIMIT};

/// Dumps the records of one entity.
pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let entity: Entity = args.entity.parse()?;
    let backend = Backend::open(&config, &args.client)?;
    let result = export(&backend, &args, entity).await;
    backend.close().await?;
    let count = result?;
    if let Some(path) = &args.out {
        eprintln!("exported {count} {entity} records to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(backend: &Backend, args: &ExportArgs, entity: Entity) -> anyhow::Result<u64> {
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut count = 0u64;
    let mut sink = match args.format {
        ExportFormat::Csv => {
            // RFC 4180 quoting by the csv crate; `\n` line ends like the JSON lines. Its errors become
            // io errors so a closed pipe (`| head`) is recognised as one.
            let mut csv = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(out);
            csv.write_record(csv_header(entity)).map_err(std::io::Error::from)?;
            Sink::Csv(Box::new(csv))
        }
        ExportFormat::Jsonl => Sink::Jsonl(out),
    };
    let mut write = |record: &Record| -> anyhow::Result<()> {
        if record.is_deleted() && !args.include_deleted || record.merged_into.is_some() {
            return Ok(());
        }
        match &mut sink {
            Sink::Csv(csv) => csv.write_record(csv_row(record)).map_err(std::io::Error::from)?,
            Sink::Jsonl(out) => writeln!(out, "{}", serde_json::to_string(record)?)?,
        }
        count += 1;
        Ok(())
    };
    match backend {
        Backend::Local { store, .. } => {
            for record in store.scan(entity) {
                write(&record?)?;
            }
        }
        Backend::Remote(client) => {
            let mut query =
                ListQuery { limit: Some(MAX_LIMIT), include_deleted: args.include_deleted, ..ListQuery::default() };
            loop {
                let page = client.record_page(entity, &query).await?;
                for versioned in &page.records {
                    write(&versioned.record)?;
                }
                match page.next {
                    Some(next) => query.cursor = Some(next),
                    None => break,
                }
            }
        }
    }
    match sink {
        Sink::Csv(mut csv) => csv.flush()?,
        Sink::Jsonl(mut out) => out.flush()?,
    }
    Ok(count)
}

/// Where exported records go.
enum Sink {
    Csv(Box<csv::Writer<Box<dyn Write>>>),
    Jsonl(Box<dyn Write>),
}

/// The CSV columns: id, the entity's fields, links (how the record is known in each CRM and why it was
/// joined), deleted_at.
pub fn csv_header(entity: Entity) -> Vec<String> {
    let mut columns = vec!["id".to_owned()];
    columns.extend(entity.fields().iter().map(|field| (*field).to_owned()));
    columns.push("links".to_owned());
    columns.push("deleted_at".to_owned());
    columns
}

/// The cells of one CSV row (nested values as compact JSON); the csv writer quotes them.
pub fn csv_row(record: &Record) -> Vec<String> {
    let fields = record.data.to_fields();
    let mut cells = vec![record.id.to_string()];
    for field in record.entity().fields() {
        cells.push(match fields.get(*field) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Object(reference)) if reference.contains_key("canonical") => {
                reference.get("canonical").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned()
            }
            Some(other) => other.to_string(),
        });
    }
    let links: Vec<String> = record
        .links
        .iter()
        .map(|link| {
            let why = match &link.matched_by {
                crmsync_connectors::canonical::MatchReason::MatchKey { key, value } => {
                    format!("match_key {key}={value}")
                }
                other => serde_json::to_value(other)
                    .ok()
                    .and_then(|value| value.get("by").and_then(|by| by.as_str().map(str::to_owned)))
                    .unwrap_or_default(),
            };
            format!("{}:{}:{} ({why})", link.connection, link.object, link.external_id)
        })
        .collect();
    cells.push(links.join("; "));
    cells.push(record.deleted_at.map(|at| at.to_string()).unwrap_or_default());
    cells
}
