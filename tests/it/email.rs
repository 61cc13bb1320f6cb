//! E-mail alerts against a real SMTP server on loopback (aiosmtpd, delivering into a Maildir).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ordersync::sandbox::Sandbox;
use tokio::process::{Child, Command};

use crate::harness::{open_order, spawn_app_on, Backend, TestApp, TestDb};

/// A real SMTP server that delivers every mail into a Maildir.
struct SmtpServer {
    port: u16,
    maildir: tempfile::TempDir,
    _child: Child,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        let python = std::env::var("ORDERSYNC_SMTP_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let maildir = tempfile::tempdir().unwrap();
        let child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{python} -m aiosmtpd is needed (Debian python3-aiosmtpd; scripts/test.sh installs it): {e}")
            });
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return SmtpServer { port, maildir, _child: child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not start on port {port}");
    }

    /// Every delivered mail as `(subject, body)`, oldest first; headers unfolded, quoted-printable undone.
    fn mails(&self) -> Vec<(String, String)> {
        let dir: PathBuf = self.maildir.path().join("mail").join("new");
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        files.sort_by_key(|path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok());
        files.iter().map(|path| parse(path)).collect()
    }

    /// Every delivered mail's headers as received, unfolded, oldest first.
    fn headers(&self) -> Vec<String> {
        let dir: PathBuf = self.maildir.path().join("mail").join("new");
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        files.sort_by_key(|path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok());
        files
            .iter()
            .map(|path| {
                let raw = std::fs::read_to_string(path).unwrap().replace("\r\n", "\n");
                raw.split_once("\n\n").unwrap().0.replace("\n ", " ").replace("\n\t", " ")
            })
            .collect()
    }
}

/// The value of header `name` in `headers` (one header a line).
fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn parse(path: &Path) -> (String, String) {
    let raw = std::fs::read_to_string(path).unwrap().replace("\r\n", "\n");
    let (headers, body) = raw.split_once("\n\n").unwrap();
    let headers = headers.replace("\n ", " ").replace("\n\t", " ");
    let subject = headers.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_string();
    let body = if headers.to_ascii_lowercase().contains("quoted-printable") {
        body.replace("=\n", "").replace("=3D", "=")
    } else {
        body.to_string()
    };
    (subject, body)
}

async fn sent(app: &TestApp) -> f64 {
    app.metric("ordersync_alert_emails_total{result=\"sent\"}").await.unwrap_or(0.0)
}

/// A pending row of an order the exchange does not know (it answers 404): no certain answer, so stuck.
async fn unknown_order(db: &TestDb, bot: &str, age: chrono::Duration) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    db.insert_pending(&id, bot, "AVNT-USD", chrono::Utc::now() - age).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mail_per_incident_listing_the_stuck_orders_then_a_resolved_mail() {
    let smtp = SmtpServer::start().await;
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    let stuck = unknown_order(&db, "alpha", chrono::Duration::minutes(20)).await;
    let resting = open_order(&db, &sandbox, "gamma", chrono::Duration::minutes(30)).await;
    let fresh = unknown_order(&db, "beta", chrono::Duration::seconds(5)).await;
    let config = format!(
        "poll_interval = \"1h\"\nmetrics_refresh = \"200ms\"\nstuck_after = \"1m\"\n\
         [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_tls = \"none\"\nfrom = \"ordersync@example.com\"\n\
         to = [\"trading-ops@example.com\"]\nremind_every = \"1h\"",
        smtp.port
    );
    let app = spawn_app_on(db, sandbox, &config).await;

    app.eventually("the incident mail", || async { smtp.mails().len() == 1 }).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one mail per incident, not one per check");
    let (subject, body) = &mails[0];
    assert_eq!(subject, "[ordersync] 1 order stuck pending longer than 1m (bots: alpha)");
    assert!(body.contains(&stuck) && body.contains("alpha") && body.contains("AVNT-USD"), "{body}");
    assert!(body.contains("does not know this order (404)"), "what ordersync did: {body}");
    let line = body.lines().find(|l| l.contains(&stuck)).unwrap();
    // The reason, not the order id (a random UUID may hold "404" itself).
    let reason = line.replace(&stuck, "");
    assert_eq!(reason.matches("404").count(), 1, "each reason said once: {line}");
    assert_eq!(reason.matches("does not know this order").count(), 1, "each reason said once: {line}");
    assert!(!line.contains("no certain answer yet ("), "no reason wrapped in another: {line}");
    assert!(!body.contains(&resting), "a resting order (OPEN on the exchange) is not stuck, however old");
    assert!(!body.contains(&fresh), "an order younger than stuck_after is not listed");

    // The bot writes the order itself: nothing is stuck any more.
    app.db.exec(&format!("UPDATE trades SET status = 'cancelled' WHERE order_id = '{stuck}'")).await;
    app.eventually("the resolved mail", || async { smtp.mails().len() == 2 }).await;
    let (subject, body) = &smtp.mails()[1];
    assert_eq!(subject, "[ordersync] RESOLVED: no orders stuck pending, no terminal conflicts");
    assert!(body.contains("No order has been stuck pending longer than 1m"), "{body}");
    app.eventually("counted", || async { sent(&app).await == 2.0 }).await;

    // What mail filters expect, as the server received it; the resolved mail answers the incident's first.
    let headers = smtp.headers();
    let first_id = header(&headers[0], "Message-ID").expect("a Message-ID");
    assert!(first_id.starts_with("<ordersync-incident-") && first_id.ends_with("@example.com>"), "{first_id}");
    for mail in &headers {
        assert!(header(mail, "Date").is_some(), "{mail}");
        assert_eq!(header(mail, "Auto-Submitted"), Some("auto-generated"), "{mail}");
        assert_eq!(header(mail, "MIME-Version"), Some("1.0"), "{mail}");
        let id = header(mail, "Message-ID").expect("a Message-ID");
        assert!(id.starts_with("<ordersync-") && id.ends_with("@example.com>"), "on the sender's domain: {id}");
        assert!(header(mail, "User-Agent").is_some_and(|ua| ua.starts_with("ordersync ")), "{mail}");
    }
    let second_id = header(&headers[1], "Message-ID").expect("a Message-ID");
    assert_ne!(second_id, first_id, "each mail its own id");
    assert_eq!(header(&headers[1], "In-Reply-To"), Some(first_id));
    assert_eq!(header(&headers[1], "References"), Some(first_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_failure_is_counted_and_the_reconciler_goes_on() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(20)).await;
    unknown_order(&db, "beta", chrono::Duration::minutes(20)).await;
    let config = format!(
        "poll_interval = \"1h\"\nmetrics_refresh = \"200ms\"\nstuck_after = \"1m\"\n\
         [coinbase]\nwebsocket = false\n\
         [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {closed}\nsmtp_tls = \"none\"\nto = [\"ops@example.com\"]"
    );
    let app = spawn_app_on(db, sandbox, &config).await;

    app.eventually("failures counted and retried", || async {
        app.metric("ordersync_alert_emails_total{result=\"failure\"}").await >= Some(2.0)
    })
    .await;
    app.sandbox.fill(&id, None, None, None).unwrap();
    let response = app.http.post(app.url(&format!("/api/v1/orders/{id}/reconcile"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.db.trade(&id).await.status, "completed", "the reconciler is unaffected");
    assert_eq!(sent(&app).await, 0.0);
}
