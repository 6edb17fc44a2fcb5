//! The ledger: one line per start and end of a handler execution, sent by the
//! `workpool-ledger` handler to a [`LedgerServer`] outside the pods, so the checker counts
//! side effects independently of the records Workpool keeps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncBufReadExt;

use crate::{HarnessError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Start,
    /// Still running (written every [`TICK_NS`] while the handler runs).
    Tick,
    End,
    /// Written by the server when a run's connection closed without an `end`: its
    /// process is gone (the kernel closes a dead process's socket, however it died).
    Gone,
}

/// How often a running handler writes a `tick`: a killed run ended before its last tick
/// plus this.
pub const TICK_NS: u128 = 100_000_000;

/// One ledger line: `<edge> <id> <created_at> <key or -> <unix ns> <run> <origin>`. A run
/// is one connection to the server, which numbers them (process ids repeat across
/// containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub edge: Edge,
    pub id: String,
    /// The submission's generation (the record's `created_at`, from the message).
    pub created_at: String,
    pub key: Option<String>,
    pub at_ns: u128,
    /// The run: the program's pid as sent, the server's connection number once received.
    pub pid: u32,
    /// Where it ran, for the evidence of a failed check: `<host>/<attempt>` (the pod's
    /// name and the worker's fencing token, `-` where unknown).
    pub origin: String,
}

/// `<host>/<attempt>` of this process: the pod's name is its hostname, and the attempt
/// is in the environment a worker gives its handler.
fn origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let attempt = std::env::var("WORKPOOL_ATTEMPT").unwrap_or_default();
    let or_dash = |text: &str| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text.replace(' ', "_")
        }
    };
    format!("{}/{}", or_dash(host.trim()), or_dash(&attempt))
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

impl Line {
    /// The line for `edge` of the work message `work`, now.
    pub fn of_work(edge: Edge, work: &serde_json::Value) -> Self {
        Self {
            edge,
            id: work["id"].as_str().unwrap_or("?").to_owned(),
            created_at: work["created_at"].as_str().unwrap_or("?").to_owned(),
            key: work["key"].as_str().map(str::to_owned),
            at_ns: now_ns(),
            pid: std::process::id(),
            origin: origin(),
        }
    }

    pub fn to_text(&self) -> String {
        let edge = match self.edge {
            Edge::Start => "start",
            Edge::Tick => "tick",
            Edge::End => "end",
            Edge::Gone => "gone",
        };
        // Keys of the workload are plain tokens; spaces would break the format.
        let key = self.key.as_deref().unwrap_or("-").replace(' ', "_");
        format!(
            "{edge} {} {} {key} {} {} {}\n",
            self.id, self.created_at, self.at_ns, self.pid, self.origin
        )
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let edge = match fields.next()? {
            "start" => Edge::Start,
            "tick" => Edge::Tick,
            "end" => Edge::End,
            "gone" => Edge::Gone,
            _ => return None,
        };
        let id = fields.next()?.to_owned();
        let created_at = fields.next()?.to_owned();
        let key = Some(fields.next()?)
            .filter(|key| *key != "-")
            .map(str::to_owned);
        let at_ns = fields.next()?.parse().ok()?;
        let pid = fields.next()?.parse().ok()?;
        let origin = fields.next().unwrap_or("-").to_owned();
        Some(Self {
            edge,
            id,
            created_at,
            key,
            at_ns,
            pid,
            origin,
        })
    }
}

/// One run of the handler: its start, and its end if it wrote one (a killed run did not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub id: String,
    pub created_at: String,
    pub key: Option<String>,
    pub start_ns: u128,
    pub end_ns: Option<u128>,
    /// The last line it wrote.
    pub last_seen_ns: u128,
    /// When its witness saw it die without an end.
    pub gone_ns: Option<u128>,
    /// Where it ran ([`Line::origin`]).
    pub origin: String,
}

impl Execution {
    /// When it ended at the latest: its end line or, if it was killed, its witness's
    /// `gone` line, or else its last tick.
    pub fn ended_by(&self) -> u128 {
        self.end_ns
            .or(self.gone_ns)
            .unwrap_or(self.last_seen_ns + TICK_NS)
    }
}

/// Pairs start and end lines by run (each execution is its own connection).
pub fn executions(text: &str) -> Vec<Execution> {
    let mut open: std::collections::HashMap<u32, Execution> = std::collections::HashMap::new();
    let mut done = Vec::new();
    for line in text.lines().filter_map(Line::parse) {
        match line.edge {
            Edge::Start => {
                let execution = Execution {
                    id: line.id,
                    created_at: line.created_at,
                    key: line.key,
                    start_ns: line.at_ns,
                    end_ns: None,
                    last_seen_ns: line.at_ns,
                    gone_ns: None,
                    origin: line.origin,
                };
                // A run that started twice (not sent by the program): keep both.
                if let Some(unfinished) = open.insert(line.pid, execution) {
                    done.push(unfinished);
                }
            }
            Edge::Tick => {
                if let Some(execution) = open.get_mut(&line.pid) {
                    execution.last_seen_ns = line.at_ns;
                }
            }
            Edge::Gone => {
                let same = |e: &Execution| e.id == line.id && e.created_at == line.created_at;
                if let Some(mut execution) = open.remove(&line.pid) {
                    if same(&execution) {
                        execution.gone_ns = Some(line.at_ns);
                        done.push(execution);
                    } else {
                        open.insert(line.pid, execution);
                    }
                }
            }
            Edge::End => {
                if let Some(mut execution) = open.remove(&line.pid) {
                    execution.end_ns = Some(line.at_ns);
                    execution.last_seen_ns = line.at_ns;
                    done.push(execution);
                }
            }
        }
    }
    done.extend(open.into_values());
    done.sort_by_key(|execution| execution.start_ns);
    done
}

/// Collects the lines of every handler run over TCP, one connection per run.
pub struct LedgerServer {
    /// Where handlers send their lines (`host:port`).
    pub address: String,
    text: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl LedgerServer {
    /// Listens on `host` (where the handlers reach this machine).
    pub async fn start(host: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((host, 0))
            .await
            .map_err(HarnessError::io(format!("binding the ledger on {host}")))?;
        let address = listener
            .local_addr()
            .map_err(HarnessError::io("ledger address"))?
            .to_string();
        let text: Arc<Mutex<String>> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let shared = text.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let run = runs.fetch_add(1, Ordering::Relaxed) + 1;
                tokio::spawn(collect_run(stream, run, shared.clone()));
            }
        });
        Ok(Self {
            address,
            text,
            task,
        })
    }

    /// Every line received so far.
    pub fn text(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for LedgerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Appends one run's lines as they come, numbered `run`; a run whose connection ends
/// after its start but without an end is gone.
async fn collect_run(stream: tokio::net::TcpStream, run: u32, text: Arc<Mutex<String>>) {
    let append = |line: &Line| {
        text.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_str(&line.to_text());
    };
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut last: Option<Line> = None;
    while let Ok(Some(received)) = lines.next_line().await {
        let Some(mut line) = Line::parse(&received) else {
            continue;
        };
        line.pid = run;
        append(&line);
        last = Some(line);
    }
    if let Some(mut line) = last.filter(|line| line.edge != Edge::End) {
        line.edge = Edge::Gone;
        line.at_ns = now_ns();
        append(&line);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_run_whose_connection_closes_without_an_end_is_gone() {
        let ledger = LedgerServer::start("127.0.0.1").await.expect("ledger");
        let work = serde_json::json!({"id": "ab", "created_at": "t1"});
        let send = |edges: &'static [Edge]| {
            let (address, work) = (ledger.address.clone(), work.clone());
            async move {
                let mut run = tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect");
                for edge in edges {
                    let line = Line::of_work(*edge, &work).to_text();
                    run.write_all(line.as_bytes()).await.expect("send");
                }
            }
        };
        send(&[Edge::Start, Edge::Tick, Edge::End]).await;
        send(&[Edge::Start]).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut runs = executions(&ledger.text());
        runs.sort_by_key(|run| run.end_ns.is_none());
        assert_eq!(runs.len(), 2, "{}", ledger.text());
        assert!(runs[0].end_ns.is_some() && runs[0].gone_ns.is_none());
        assert!(runs[1].end_ns.is_none() && runs[1].gone_ns.is_some());
    }

    #[test]
    fn lines_round_trip_and_pair_by_process() {
        let work = serde_json::json!({"id": "ab", "created_at": "t1", "key": "k"});
        let start = Line::of_work(Edge::Start, &work);
        assert_eq!(Line::parse(&start.to_text()), Some(start.clone()));
        let text = "start a t1 - 10 7\nstart b t2 k 11 8\ntick b t2 k 15 8\nend a t1 - 20 7\n\
             gone a t1 - 21 7\nstart c t3 - 30 7\nstart d t4 - 40 9\ngone d t4 - 42 9\n";
        let runs = executions(text);
        assert_eq!(runs.len(), 4);
        assert_eq!((runs[0].id.as_str(), runs[0].end_ns), ("a", Some(20)));
        assert_eq!((runs[1].key.as_deref(), runs[1].end_ns), (Some("k"), None));
        assert_eq!(runs[1].ended_by(), 15 + TICK_NS);
        assert_eq!(runs[2].start_ns, 30);
        assert_eq!((runs[3].id.as_str(), runs[3].ended_by()), ("d", 42));
    }
}
