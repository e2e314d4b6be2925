//! A real PostgreSQL server for tests (Debian `postgresql`).

use std::path::PathBuf;
use std::process::Command;

use tokio_postgres::{Client, NoTls};

pub fn pg_bin(name: &str) -> PathBuf {
    let found = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(Result::ok)
            .map(|e| e.path().join("bin").join(name))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("PostgreSQL server binaries are required: apt-get install postgresql (.ci/run does)")
    })
}

/// A PostgreSQL server in a temp dir, run as the `postgres` user on a
/// random loopback port; stopped on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Server {
    pub fn start(max_connections: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "chown to the postgres user needs root (as in CI)"
        );
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Self { dir, port };
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nmax_connections = {max_connections}\nsuperuser_reserved_connections = 2\nunix_socket_directories = '{}'\nfsync = off\n",
                data.display()
            ),
        )
        .unwrap();
        s.ctl("start");
        s
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ctl(&self, what: &str) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-w", "-t", "30", "-m", "fast", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg(what)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn connect(&self, user: &str, app: &str) -> Result<Client, tokio_postgres::Error> {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres application_name={app}",
                self.port
            ),
            NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(c)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}
