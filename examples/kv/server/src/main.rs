//! kv-server: the key-value service of stockade's Keep-to-Keep example (a WASI
//! preview 1 command, standard library only).
//!
//! Usage: kv-server [CONNECTIONS]
//!
//! The Keep runtime preopens the listening socket declared in the manifest
//! (`[[network.listen]] name = "kv"`) and puts its descriptor, in decimal, in
//! the environment variable `STOCKADE_LISTEN_KV`. The runtime terminates the
//! mutual TLS (with the Keep's steward certificate) and checks the peer's
//! workload certificate, so this program sees plain bytes from peers that the
//! runtime has already accepted.
//!
//! kv-server accepts CONNECTIONS connections (default 1, at most 1000) one
//! after another, then exits 0, so that a deployment ends. The store lives in
//! memory and is shared by the connections, in order. On each connection it
//! reads commands, one per line (`\n`, an optional `\r` before it is
//! dropped), and answers each with one line:
//!
//! ```text
//! SET <key> <value>   ->  OK                (the value is the rest of the line)
//! GET <key>           ->  VALUE <value>  or  MISSING
//! DEL <key>           ->  DELETED        or  MISSING
//! COUNT               ->  COUNT <n>
//! QUIT                ->  BYE               (then the connection is closed)
//! anything else       ->  ERROR <reason>
//! ```
//!
//! Limits: a key is 1 to 64 bytes of ASCII letters, digits and `._:-`; a
//! value is at most 1024 bytes of UTF-8 without control characters; at most
//! 1000 entries; a command line is at most 1100 bytes (a longer line gets
//! `ERROR line too long` and the connection is closed, as the rest of the line
//! cannot be told apart from the next command); at most 10000 commands per
//! connection. Every limit gives an `ERROR` answer, never a panic.
//!
//! On standard error it prints one line when it starts and one per connection
//! (its number, how many commands it ran, how it ended). An accept that fails
//! because the peer went away or was refused (the runtime refuses a peer
//! whose certificate names no expected workload) is reported on standard
//! error and does not count as a connection; after 100 such failures, or on
//! any other accept error, kv-server exits 1. Exit codes: 0 after CONNECTIONS
//! connections; 2 for a bad argument or a missing or malformed
//! `STOCKADE_LISTEN_KV`; 1 when accepting fails as above.
//!
//! Build: examples/build.sh (Debian rustc 1.63, `--target wasm32-wasi`).
//! Rust 1.63's std implements `TcpListener::accept` on WASI with the
//! `sock_accept` call (library/std/src/sys/wasi/net.rs; the peer address it
//! returns is unspecified, 0.0.0.0:0, as WASI preview 1 has none).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::wasi::io::FromRawFd;

const ENV_LISTEN: &str = "STOCKADE_LISTEN_KV";
const MAX_CONNECTIONS: u32 = 1000;
const MAX_KEY: usize = 64;
const MAX_VALUE: usize = 1024;
const MAX_ENTRIES: usize = 1000;
const MAX_LINE: usize = 1100;
const MAX_COMMANDS: u32 = 10_000;
const MAX_FAILED_ACCEPTS: u32 = 100;

fn main() {
    // Not `main() -> ExitCode`: Rust 1.63's std has no exit codes on WASI
    // beyond success and failure (its WASI target uses the `unsupported`
    // process module, whose ExitCode is a bool: `ExitCode::from(2)` exits 1);
    // std::process::exit passes the code to proc_exit as is.
    std::process::exit(run())
}

fn run() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let connections = match args.as_slice() {
        [] => 1,
        [n] => match n.parse::<u32>() {
            Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => n,
            _ => {
                eprintln!("kv-server: CONNECTIONS must be an integer from 1 to {MAX_CONNECTIONS}, not {n:?}");
                return 2;
            }
        },
        _ => {
            eprintln!("usage: kv-server [CONNECTIONS]");
            return 2;
        }
    };
    let fd = match descriptor(ENV_LISTEN) {
        Ok(fd) => fd,
        Err(message) => {
            eprintln!("kv-server: {message}");
            return 2;
        }
    };
    // SAFETY: the descriptor is the listening socket the runtime preopened for
    // this program and named in the environment; nothing else owns it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    eprintln!("kv-server: serving {connections} connection(s) on descriptor {fd}");

    let mut store: HashMap<String, String> = HashMap::new();
    let mut failed = 0u32;
    let mut number = 0u32;
    while number < connections {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("kv-server: accept failed: {error}");
                let transient = matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::PermissionDenied
                );
                failed += 1;
                if !transient || failed == MAX_FAILED_ACCEPTS {
                    return 1;
                }
                continue;
            }
        };
        number += 1;
        let (commands, end) = serve(&stream, &mut store);
        eprintln!(
            "kv-server: connection {number}: {commands} command(s), {end}, {} entries",
            store.len()
        );
    }
    0
}

/// The decimal descriptor in environment variable `name`.
fn descriptor(name: &str) -> Result<i32, String> {
    let value = std::env::var(name).map_err(|_| {
        format!("{name} is not set: deploy this workload with a [[network.listen]] socket named \"kv\"")
    })?;
    match value.parse::<i32>() {
        Ok(fd) if fd >= 0 => Ok(fd),
        _ => Err(format!("{name} is not a descriptor number: {value:?}")),
    }
}

/// Serves one connection; returns the number of commands and how it ended.
fn serve(stream: &TcpStream, store: &mut HashMap<String, String>) -> (u32, String) {
    let mut reader = BufReader::new(stream);
    let mut writer = stream;
    let mut commands = 0u32;
    loop {
        let line = match read_line(&mut reader) {
            Ok(Line::Text(line)) => line,
            Ok(Line::End) => return (commands, "closed by the peer".to_string()),
            Ok(Line::TooLong) => {
                let _ = writer.write_all(b"ERROR line too long\n");
                return (commands, "line too long".to_string());
            }
            Err(error) => return (commands, format!("read error: {error}")),
        };
        if commands == MAX_COMMANDS {
            let _ = writer.write_all(b"ERROR too many commands\n");
            return (commands, "too many commands".to_string());
        }
        commands += 1;
        let (answer, quit) = execute(&line, store);
        if let Err(error) = writer.write_all(answer.as_bytes()).and_then(|_| writer.write_all(b"\n")) {
            return (commands, format!("write error: {error}"));
        }
        if quit {
            return (commands, "QUIT".to_string());
        }
    }
}

enum Line {
    Text(String),
    End,
    TooLong,
}

/// Reads one line of at most MAX_LINE bytes (without its `\n` and `\r`).
fn read_line<R: BufRead>(reader: &mut R) -> io::Result<Line> {
    let mut bytes = Vec::new();
    let limit = (MAX_LINE + 2) as u64; // the line, "\r" and "\n"
    let read = reader.by_ref().take(limit).read_until(b'\n', &mut bytes)?;
    if read == 0 {
        return Ok(Line::End);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    } else if read as u64 == limit {
        return Ok(Line::TooLong);
    }
    if bytes.len() > MAX_LINE {
        return Ok(Line::TooLong);
    }
    // A last line without "\n" (the peer closed after it) is still a command.
    Ok(Line::Text(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Runs one command; returns the answer line and whether to close.
fn execute(line: &str, store: &mut HashMap<String, String>) -> (String, bool) {
    let (command, rest) = match line.split_once(' ') {
        Some((command, rest)) => (command, Some(rest)),
        None => (line, None),
    };
    let answer = match (command, rest) {
        ("SET", Some(rest)) => match rest.split_once(' ') {
            Some((key, value)) => set(store, key, value),
            None => "ERROR usage: SET <key> <value>".to_string(),
        },
        ("GET", Some(key)) => match check_key(key) {
            Err(error) => error,
            Ok(()) => match store.get(key) {
                Some(value) => format!("VALUE {value}"),
                None => "MISSING".to_string(),
            },
        },
        ("DEL", Some(key)) => match check_key(key) {
            Err(error) => error,
            Ok(()) => match store.remove(key) {
                Some(_) => "DELETED".to_string(),
                None => "MISSING".to_string(),
            },
        },
        ("COUNT", None) => format!("COUNT {}", store.len()),
        ("QUIT", None) => return ("BYE".to_string(), true),
        ("SET" | "GET" | "DEL" | "COUNT" | "QUIT", _) => format!("ERROR bad arguments for {command}"),
        _ => "ERROR unknown command (SET, GET, DEL, COUNT, QUIT)".to_string(),
    };
    (answer, false)
}

fn set(store: &mut HashMap<String, String>, key: &str, value: &str) -> String {
    if let Err(error) = check_key(key) {
        return error;
    }
    if value.len() > MAX_VALUE {
        return format!("ERROR value longer than {MAX_VALUE} bytes");
    }
    if value.chars().any(char::is_control) {
        return "ERROR control character in value".to_string();
    }
    if !store.contains_key(key) && store.len() >= MAX_ENTRIES {
        return format!("ERROR store full ({MAX_ENTRIES} entries)");
    }
    store.insert(key.to_string(), value.to_string());
    "OK".to_string()
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!("ERROR key must be 1 to {MAX_KEY} bytes"));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) {
        return Err("ERROR key may hold only letters, digits and ._:-".to_string());
    }
    Ok(())
}
