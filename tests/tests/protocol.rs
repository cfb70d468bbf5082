//! The wire: `vxd --stdio` answers JSON-RPC 2.0 lines, survives garbage,
//! and insists on `daemon.hello` first.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use vx_tests::{basic, vxd_bin};

struct Engine {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Engine {
    fn start(cwd: &std::path::Path) -> Engine {
        let mut child = Command::new(vxd_bin())
            .arg("--stdio")
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Engine { child, out }
    }
    fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.child.stdin.as_mut().unwrap();
        w.write_all(bytes).unwrap();
        w.flush().unwrap();
    }
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }
    /// Reads until the response with `id`, returning it and the notifications before it.
    fn until(&mut self, id: i64) -> (Value, Vec<Value>) {
        let mut notes = Vec::new();
        loop {
            let v = self.recv();
            if v["id"] == id {
                return (v, notes);
            }
            notes.push(v);
        }
    }
}

#[test]
fn garbage_lines_get_errors_and_the_connection_survives() {
    let ws = basic();
    let mut e = Engine::start(ws.root());
    e.send_raw(b"this is not json\n");
    let v = e.recv();
    assert_eq!(v["error"]["code"], -32700);
    assert_eq!(v["id"], Value::Null);
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":{\"x\":1},\"method\":\"m\"}\n");
    assert_eq!(e.recv()["error"]["code"], -32600);
    // a request before the handshake
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"cache.stats\",\"params\":{}}\n");
    assert_eq!(e.recv()["error"]["code"], -32005);
    // the handshake, written one byte at a time
    let hello = json!({"jsonrpc":"2.0","id":2,"method":"daemon.hello","params":{"protocol":1,"client_version":"test"}});
    for b in format!("{hello}\n").bytes() {
        e.send_raw(&[b]);
    }
    let v = e.recv();
    assert_eq!(v["result"]["protocol"], 1);
    assert_eq!(v["result"]["mode"], "stdio");
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"no.such\"}\n");
    assert_eq!(e.recv()["error"]["code"], -32601);
    let stats = json!({"jsonrpc":"2.0","id":4,"method":"cache.stats","params":{"cwd": ws.root()}});
    e.send_raw(format!("{stats}\n").as_bytes());
    let v = e.recv();
    assert_eq!(v["result"]["entries"], 0, "{v}");
    // invalid params
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"run.start\",\"params\":{\"cwd\":3}}\n");
    assert_eq!(e.recv()["error"]["code"], -32602);
    drop(e.child.stdin.take());
    assert!(e.child.wait().unwrap().success());
}

#[test]
fn wrong_protocol_version_is_refused() {
    let ws = basic();
    let mut e = Engine::start(ws.root());
    let hello = json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":999,"client_version":"x"}});
    e.send_raw(format!("{hello}\n").as_bytes());
    let v = e.recv();
    assert_eq!(v["error"]["code"], -32005);
    assert_eq!(v["error"]["data"]["protocol"], 1);
}

#[test]
fn run_start_streams_events_then_answers() {
    let ws = basic();
    let mut e = Engine::start(ws.root());
    let hello = json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":1,"client_version":"t"}});
    e.send_raw(format!("{hello}\n").as_bytes());
    e.recv();
    let run = json!({"jsonrpc":"2.0","id":2,"method":"run.start","params":{
        "cwd": ws.root(), "tasks": ["build"], "env": {"PATH": std::env::var("PATH").unwrap()}}});
    e.send_raw(format!("{run}\n").as_bytes());
    let (resp, notes) = e.until(2);
    assert_eq!(resp["result"]["ok"], true, "{resp}");
    assert!(
        notes
            .iter()
            .all(|n| n["method"] == "run.event" && n.get("id").is_none())
    );
    let kinds: Vec<&str> = notes
        .iter()
        .filter_map(|n| n["params"]["type"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.iter().filter(|k| **k == "task_finished").count(), 2);
    // a config error is a JSON-RPC error with the config code
    ws.write("packages/lib/vx.toml", "[tasks.build]\nbogus = 1\n");
    let run = json!({"jsonrpc":"2.0","id":3,"method":"run.start","params":{"cwd": ws.root(), "tasks": ["build"]}});
    e.send_raw(format!("{run}\n").as_bytes());
    let (resp, _) = e.until(3);
    assert_eq!(resp["error"]["code"], -32001, "{resp}");
}
