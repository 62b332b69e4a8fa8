//! wordcount: a stockade example workload that does real work (a WASI command).
//!
//! Usage: wordcount [FILE]...
//!
//! Reads every FILE given as an argument ("-" means standard input; no
//! arguments at all means standard input) and prints, for each input, its line,
//! word and byte counts and its SHA-256, then a total line when there is more
//! than one input, then the ten most frequent words over all inputs:
//!
//! ```text
//! sample.txt: lines=12 words=131 bytes=743 sha256=6bd386a8718637c6...
//! top words:
//!      20 the
//!       7 it
//! ```
//!
//! Definitions (chosen so that each one is a one-liner in Python):
//!
//! * lines: the number of `\n` bytes, like `wc -l` (`data.count(b"\n")`);
//! * words: runs of bytes that are not ASCII white space (space, `\t`, `\n`,
//!   `\v`, `\f`, `\r`), like `wc -w` in the C locale (`len(data.split())`);
//! * bytes: the input's length;
//! * sha256: the SHA-256 of the input's bytes, implemented below because this
//!   example uses the standard library only (no crates);
//! * top words: the input is decoded as UTF-8 (invalid sequences become
//!   U+FFFD), a word is a run of alphanumeric characters, optionally joined by
//!   single apostrophes ("don't" is one word), and words are compared in lower
//!   case. They are sorted by decreasing count, ties broken by the word in
//!   code point order, so the output is deterministic.
//!
//! All inputs are read before anything is printed. If an input cannot be
//! opened or read, a message goes to standard error for each such input,
//! nothing goes to standard output, and the exit code is 1.
//!
//! Build: examples/build.sh (Debian rustc 1.63, `--target wasm32-wasi`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::process::ExitCode;

/// How many of the most frequent words to print.
const TOP_WORDS: usize = 10;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        args.push(OsString::from("-"));
    }

    let mut inputs: Vec<(String, Vec<u8>)> = Vec::with_capacity(args.len());
    let mut failed = false;
    for arg in &args {
        let name = arg.to_string_lossy().into_owned();
        match read_input(arg) {
            Ok(data) => inputs.push((name, data)),
            Err(message) => {
                eprintln!("wordcount: {name}: {message}");
                failed = true;
            }
        }
    }
    if failed {
        return ExitCode::from(1);
    }

    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match report(&mut out, &inputs).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wordcount: cannot write to standard output: {err}");
            ExitCode::from(1)
        }
    }
}

/// Reads a whole input; `-` is standard input. The error is a message.
fn read_input(arg: &OsString) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    if arg == "-" {
        io::stdin()
            .lock()
            .read_to_end(&mut data)
            .map_err(|err| format!("cannot read: {err}"))?;
    } else {
        let mut file = File::open(arg).map_err(|err| format!("cannot open: {err}"))?;
        file.read_to_end(&mut data)
            .map_err(|err| format!("cannot read: {err}"))?;
    }
    Ok(data)
}

/// Writes the whole report for inputs that were all read successfully.
fn report(out: &mut impl Write, inputs: &[(String, Vec<u8>)]) -> io::Result<()> {
    let mut total = Counts::default();
    let mut frequencies: HashMap<String, u64> = HashMap::new();

    for (name, data) in inputs {
        let counts = Counts::of(data);
        let digest = hex(&Sha256::digest(data));
        writeln!(
            out,
            "{name}: lines={} words={} bytes={} sha256={digest}",
            counts.lines, counts.words, counts.bytes
        )?;
        total.add(&counts);
        add_words(&String::from_utf8_lossy(data), &mut frequencies);
    }
    if inputs.len() > 1 {
        writeln!(
            out,
            "total: lines={} words={} bytes={}",
            total.lines, total.words, total.bytes
        )?;
    }

    writeln!(out, "top words:")?;
    for (word, count) in top_words(&frequencies, TOP_WORDS) {
        writeln!(out, "{count:>7} {word}")?;
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    lines: u64,
    words: u64,
    bytes: u64,
}

impl Counts {
    fn of(data: &[u8]) -> Counts {
        let mut counts = Counts {
            bytes: data.len() as u64,
            ..Counts::default()
        };
        let mut in_word = false;
        for &byte in data {
            if byte == b'\n' {
                counts.lines += 1;
            }
            if is_space(byte) {
                in_word = false;
            } else if !in_word {
                in_word = true;
                counts.words += 1;
            }
        }
        counts
    }

    fn add(&mut self, other: &Counts) {
        self.lines += other.lines;
        self.words += other.words;
        self.bytes += other.bytes;
    }
}

/// ASCII white space as `isspace` sees it in the C locale (and Python's
/// `bytes.split`): unlike `u8::is_ascii_whitespace`, this includes `\v`.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Adds every word of `text` (lower case) to `frequencies`.
fn add_words(text: &str, frequencies: &mut HashMap<String, u64>) {
    let mut chars = text.char_indices().peekable();
    while let Some((start, first)) = chars.next() {
        if !first.is_alphanumeric() {
            continue;
        }
        let mut end = start + first.len_utf8();
        loop {
            match chars.peek() {
                Some(&(i, c)) if c.is_alphanumeric() => {
                    end = i + c.len_utf8();
                    chars.next();
                }
                Some(&(_, '\'')) => {
                    // An apostrophe belongs to the word only between two
                    // alphanumeric characters.
                    let mut ahead = chars.clone();
                    ahead.next();
                    match ahead.peek() {
                        Some(&(i, c)) if c.is_alphanumeric() => {
                            end = i + c.len_utf8();
                            chars.next();
                            chars.next();
                        }
                        _ => break,
                    }
                }
                _ => break,
            }
        }
        *frequencies.entry(text[start..end].to_lowercase()).or_insert(0) += 1;
    }
}

/// The `n` most frequent words, by decreasing count then by word.
fn top_words(frequencies: &HashMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut words: Vec<(&str, u64)> = frequencies
        .iter()
        .map(|(word, &count)| (word.as_str(), count))
        .collect();
    words.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    words.truncate(n);
    words
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// SHA-256 (FIPS 180-4), straightforward and unoptimised.
struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    block_len: usize,
    message_len: u64,
}

const SHA256_H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Sha256 {
        Sha256 {
            state: SHA256_H0,
            block: [0; 64],
            block_len: 0,
            message_len: 0,
        }
    }

    fn digest(data: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(data);
        hasher.finish()
    }

    fn update(&mut self, mut data: &[u8]) {
        self.message_len = self.message_len.wrapping_add(data.len() as u64);
        if self.block_len > 0 {
            let take = (64 - self.block_len).min(data.len());
            self.block[self.block_len..self.block_len + take].copy_from_slice(&data[..take]);
            self.block_len += take;
            data = &data[take..];
            if self.block_len < 64 {
                return;
            }
            let block = self.block;
            compress(&mut self.state, &block);
            self.block_len = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            compress(&mut self.state, block);
        }
        let rest = blocks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.block_len = rest.len();
    }

    fn finish(mut self) -> [u8; 32] {
        let bit_len = self.message_len.wrapping_mul(8);
        self.update(&[0x80]);
        while self.block_len != 56 {
            self.update(&[0]);
        }
        self.update(&bit_len.to_be_bytes());
        debug_assert_eq!(self.block_len, 0);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

fn compress(state: &mut [u32; 8], block: &[u8]) {
    let mut w = [0u32; 64];
    for (i, bytes) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
    }

    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(SHA256_K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (word, value) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *word = word.wrapping_add(value);
    }
}
