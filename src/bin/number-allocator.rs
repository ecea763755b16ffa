//! `number-allocator`: serves `numbering.v1.NumberAllocator` over PostgreSQL.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use clap::Parser;
use numbering::{
    allocator::{
        Allocator,
        domain::NumberFormat,
        grpc,
        postgres::{MIGRATOR, PgCounterStore},
        store::CounterStore,
    },
    db,
    server::{
        self,
        config::{DatabaseArgs, ServerArgs, parse_or_exit},
        shutdown, telemetry,
    },
};
use tokio::net::TcpListener;

/// Hands out per-tenant, per-series numbers over gRPC, each committed before it is returned.
#[derive(Debug, Parser)]
#[command(version)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "NUMBERING_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,

    /// Number template of new series: text around {number} or {number:0W}.
    #[arg(long, env = "NUMBERING_DEFAULT_FORMAT", default_value = NumberFormat::DEFAULT)]
    default_format: NumberFormat,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = parse_or_exit();
    telemetry::init(config.server.log_format);

    let url = &config.database.database_url;
    let pool = db::connect_postgres(url, &config.database.pool())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    MIGRATOR.run(&pool).await.context("running migrations")?;
    let store = Arc::new(PgCounterStore::new(pool));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, database = %url, "number-allocator listening");

    let allocator = Allocator::new(store.clone(), config.default_format);
    server::serve(
        listener,
        grpc::service(allocator),
        store.clone(),
        &config.server.settings(),
        shutdown::signal(),
    )
    .await?;
    store.close().await;
    tracing::info!("number-allocator stopped");
    Ok(())
}
