//! A stand-in for the controller's `GET /v1/table` with its long-poll contract: 200 and the
//! table when its generation is above `after`, else the request is held until the table changes
//! (200) or `waitMs` passes (304). Tests swap the table, stop the stub (the controller dies:
//! held polls are cut and new connections refused) and read back every poll it saw.

use crate::http_server::{HttpServer, Reply, Request};
use crate::ports::bind_loopback;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One poll as the stub saw it.
#[derive(Debug, Clone)]
pub struct PollRecord {
    pub after: Option<u64>,
    pub wait_ms: Option<u64>,
    pub gateway: Option<String>,
    pub generation_header: Option<String>,
    pub authority: Option<String>,
    pub received: Instant,
    /// 200, 304, or 0 when the stub was stopped while holding it.
    pub status: u16,
}

#[derive(Default)]
struct State {
    generation: u64,
    body: String,
    stopped: bool,
    polls: Vec<PollRecord>,
    in_flight: u32,
    max_in_flight: u32,
    /// `after` of each poll being held right now.
    held: Vec<u64>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

pub struct TableStub {
    server: HttpServer,
    shared: Arc<Shared>,
}

impl TableStub {
    /// Serves `table` (a routing table JSON value with a `generation`).
    pub fn start(table: &serde_json::Value) -> Result<TableStub, String> {
        let (listener, _) = bind_loopback()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let handler_shared = Arc::clone(&shared);
        let server = HttpServer::start(
            listener,
            Arc::new(move |req: &Request| handle(&handler_shared, req)),
        )?;
        let stub = TableStub { server, shared };
        stub.set_table(table)?;
        Ok(stub)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Replaces the table; held polls with a lower `after` are answered at once.
    pub fn set_table(&self, table: &serde_json::Value) -> Result<(), String> {
        let generation = table
            .get("generation")
            .and_then(serde_json::Value::as_u64)
            .ok_or("table has no numeric generation")?;
        self.set_raw(generation, table.to_string())
    }

    /// Serves `body` as-is under `generation` (for tables the filter must reject).
    pub fn set_raw(&self, generation: u64, body: String) -> Result<(), String> {
        let mut s = self.shared.state.lock().map_err(|e| e.to_string())?;
        s.generation = generation;
        s.body = body;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Every poll received so far.
    pub fn polls(&self) -> Vec<PollRecord> {
        self.shared
            .state
            .lock()
            .map(|s| s.polls.clone())
            .unwrap_or_default()
    }

    /// The most polls ever held at the same time.
    pub fn max_concurrent_polls(&self) -> u32 {
        self.shared
            .state
            .lock()
            .map(|s| s.max_in_flight)
            .unwrap_or(0)
    }

    /// Waits until a poll asking for tables after `generation` is being held.
    pub fn wait_for_held_poll(&self, generation: u64, timeout: Duration) -> Result<(), String> {
        crate::process::poll_until(
            &format!("a held poll with after={generation}"),
            timeout,
            Duration::from_millis(5),
            || {
                let s = self.shared.state.lock().map_err(|e| e.to_string())?;
                if s.held.contains(&generation) {
                    Ok(())
                } else {
                    Err(format!("held: {:?}", s.held))
                }
            },
        )
    }

    /// The controller dies: held polls are cut without an answer, the port is closed.
    pub fn stop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.stopped = true;
        }
        self.shared.changed.notify_all();
        self.server.stop();
    }
}

fn handle(shared: &Shared, req: &Request) -> Reply {
    if req.path() != "/v1/table" {
        return Reply::text(404, "not found");
    }
    let after: Option<u64> = req.query("after").and_then(|v| v.parse().ok());
    let wait_ms: Option<u64> = req.query("waitMs").and_then(|v| v.parse().ok());
    let mut record = PollRecord {
        after,
        wait_ms,
        gateway: req.header("x-veer-gateway").map(str::to_string),
        generation_header: req.header("x-veer-generation").map(str::to_string),
        authority: req.header("host").map(str::to_string),
        received: Instant::now(),
        status: 0,
    };
    let Ok(mut s) = shared.state.lock() else {
        return Reply::Drop;
    };
    s.in_flight += 1;
    s.max_in_flight = s.max_in_flight.max(s.in_flight);
    let held_after = after.unwrap_or(0);
    s.held.push(held_after);
    let deadline = Instant::now() + Duration::from_millis(wait_ms.unwrap_or(0).min(120_000));
    let reply = loop {
        if s.stopped {
            break Reply::Drop;
        }
        if s.generation > after.unwrap_or(0) {
            record.status = 200;
            break Reply::Respond {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: s.body.clone().into_bytes(),
            };
        }
        let now = Instant::now();
        if now >= deadline {
            record.status = 304;
            break Reply::Respond {
                status: 304,
                headers: Vec::new(),
                body: Vec::new(),
            };
        }
        s = match shared.changed.wait_timeout(s, deadline - now) {
            Ok((guard, _)) => guard,
            Err(_) => return Reply::Drop,
        };
    };
    s.in_flight -= 1;
    if let Some(i) = s.held.iter().position(|a| *a == held_after) {
        s.held.swap_remove(i);
    }
    s.polls.push(record);
    reply
}
