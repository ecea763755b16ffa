//! How the tests find or start their PostgreSQL server.

use std::net::SocketAddr;

use crate::helpers::{PgServer, answers, free_port};

/// With nothing listening at the server address, the tests get a throwaway
/// server that works, and it is stopped and removed when dropped.
#[test]
fn a_throwaway_server_starts_where_nothing_answers() {
    let nowhere = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        free_port().unwrap()
    );
    let PgServer::Throwaway(server) = PgServer::at(&nowhere).unwrap() else {
        panic!("nothing listens at {nowhere}, yet it was taken as running");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let superuser: bool = runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&server.url).await.unwrap();
        sqlx::query("CREATE DATABASE numbering_harness_check")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    });
    assert!(
        superuser,
        "the tests that cut databases off need a superuser"
    );
    let (dir, port) = (
        server.dir.clone(),
        url::Url::parse(&server.url).unwrap().port().unwrap(),
    );
    drop(server);
    assert!(!dir.exists(), "{} not removed", dir.display());
    assert!(
        !answers(SocketAddr::from(([127, 0, 0, 1], port))),
        "still running"
    );
}
