//! kv-client: the client of stockade's Keep-to-Keep example (a WASI preview 1
//! command, standard library only).
//!
//! Usage: kv-client [COMMAND]...
//!
//! The Keep runtime preopens the connection declared in the manifest
//! (`[[network.connect]] name = "kv"`), already connected over mutual TLS to a
//! server whose workload certificate names an expected peer, and puts its
//! descriptor, in decimal, in the environment variable `STOCKADE_CONNECT_KV`.
//!
//! kv-client sends each COMMAND argument as one line (`SET k v`, `GET k`,
//! `DEL k`, `COUNT`; see kv-server), or, without arguments, each line of
//! standard input (at most 1000 commands), then `QUIT`. For each command it
//! prints `> COMMAND` and the server's answer line on standard output.
//!
//! Exit codes: 0 when every answer was read (answers starting with `ERROR`
//! included, they are the server's to give); 1 when the connection fails or
//! closes early; 2 for a missing or malformed `STOCKADE_CONNECT_KV`, too many
//! commands, or a command with a line break in it.
//!
//! Build: examples/build.sh (Debian rustc 1.63, `--target wasm32-wasi`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::wasi::io::FromRawFd;

const ENV_CONNECT: &str = "STOCKADE_CONNECT_KV";
const MAX_COMMANDS: usize = 1000;
/// Longest answer line read (kv-server's longest is `VALUE ` and 1024 bytes).
const MAX_ANSWER: u64 = 4096;

fn main() {
    // Not `main() -> ExitCode`: Rust 1.63's std has no exit codes on WASI
    // beyond success and failure (its WASI target uses the `unsupported`
    // process module, whose ExitCode is a bool: `ExitCode::from(2)` exits 1);
    // std::process::exit passes the code to proc_exit as is.
    std::process::exit(run())
}

fn run() -> i32 {
    let mut commands: Vec<String> = std::env::args().skip(1).collect();
    if commands.is_empty() {
        match read_stdin() {
            Ok(lines) => commands = lines,
            Err(error) => {
                eprintln!("kv-client: standard input: {error}");
                return 2;
            }
        }
    }
    if commands.len() > MAX_COMMANDS {
        eprintln!("kv-client: at most {MAX_COMMANDS} commands, not {}", commands.len());
        return 2;
    }
    if commands.iter().any(|c| c.contains('\n') || c.contains('\r')) {
        eprintln!("kv-client: a command may not contain a line break");
        return 2;
    }
    let fd = match std::env::var(ENV_CONNECT) {
        Err(_) => {
            eprintln!(
                "kv-client: {ENV_CONNECT} is not set: deploy this workload with a [[network.connect]] socket named \"kv\""
            );
            return 2;
        }
        Ok(value) => match value.parse::<i32>() {
            Ok(fd) if fd >= 0 => fd,
            _ => {
                eprintln!("kv-client: {ENV_CONNECT} is not a descriptor number: {value:?}");
                return 2;
            }
        },
    };
    // SAFETY: the descriptor is the connection the runtime preopened for this
    // program and named in the environment; nothing else owns it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    match talk(&stream, &commands) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("kv-client: {error}");
            1
        }
    }
}

fn read_stdin() -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for line in io::stdin().lock().lines() {
        let line = line?;
        let line = line.trim_end_matches('\r');
        if !line.is_empty() {
            lines.push(line.to_string());
        }
        if lines.len() > MAX_COMMANDS {
            break;
        }
    }
    Ok(lines)
}

fn talk(stream: &TcpStream, commands: &[String]) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut writer = stream;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for command in commands.iter().map(String::as_str).chain(std::iter::once("QUIT")) {
        writer.write_all(command.as_bytes())?;
        writer.write_all(b"\n")?;
        writer.flush()?;
        let answer = read_answer(&mut reader)?;
        if command != "QUIT" {
            writeln!(out, "> {command}")?;
            writeln!(out, "{answer}")?;
        }
    }
    out.flush()
}

fn read_answer<R: BufRead>(reader: &mut R) -> io::Result<String> {
    let mut bytes = Vec::new();
    reader.by_ref().take(MAX_ANSWER).read_until(b'\n', &mut bytes)?;
    if bytes.last() != Some(&b'\n') {
        let what = if bytes.is_empty() { "closed by the server" } else { "answer too long or cut" };
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection {what}")));
    }
    bytes.pop();
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
