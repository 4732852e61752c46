//! `sonde sql`: runs one statement against a server's `POST /api/v1/sql` and prints
//! the answer — an aligned table by default, or CSV / JSON.

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// The statement (SELECT, EXPLAIN, SHOW, DESCRIBE).
    sql: String,
    /// The server's HTTP address.
    #[arg(long, env = "SONDE_URL", default_value = "http://127.0.0.1:4318")]
    url: String,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Bearer token for servers with authentication on.
    #[arg(long, env = "SONDE_TOKEN")]
    token: Option<String>,
}

pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    let accept = match args.format {
        Format::Table => "application/vnd.apache.arrow.stream",
        Format::Csv => "text/csv",
        Format::Json => "application/json",
    };
    let url = format!("{}/api/v1/sql", args.url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, truncated, body) = runtime.block_on(async {
        let mut req = reqwest::Client::new()
            .post(&url)
            .header("Accept", accept)
            .json(&serde_json::json!({ "sql": args.sql }));
        if let Some(t) = &args.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let status = resp.status();
        let truncated = resp
            .headers()
            .get("sonde-truncated")
            .is_some_and(|v| v == "true");
        let body = resp.bytes().await?;
        anyhow::Ok((status, truncated, body))
    })?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{status}: {msg}");
    }
    match args.format {
        Format::Table => println!("{}", sonde_query::format::table_from_ipc(&body)?),
        _ => print!("{}", String::from_utf8_lossy(&body)),
    }
    if truncated {
        eprintln!("(answer cut off at the server's row limit)");
    }
    Ok(())
}
