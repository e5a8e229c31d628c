//! A PostgreSQL database of its own for one test, dropped afterwards. The
//! server is the machine's (127.0.0.1:5432, user `postgres`, trust auth);
//! `E2E_POSTGRES_URL` names another admin URL.

use std::time::Duration;

/// The admin connection URL.
pub fn admin_url() -> String {
    std::env::var("E2E_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh database; dropped (with its connections) when this is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {}: {e}", admin_url()));
    tokio::spawn(connection);
    client
}

impl TestDatabase {
    pub async fn create() -> Self {
        let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin_url();
        let server = &base[..base.rfind('/').unwrap()];
        Self {
            url: format!("{server}/{name}"),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside the test's runtime: use a thread of its own.
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let drop = async {
                    admin()
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                };
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(20), drop).await {
                    eprintln!("could not drop test database {name}: {e}");
                }
            });
        });
        let _ = done.join();
    }
}
