// A WASI preview 2 command component written in JavaScript (built with
// componentize-js, see build.sh): greets the name in its first argument (or
// $NAME), then summarises the text on its stdin: lines, words, and the most
// frequent words. Exits with code 2 when asked to (argument --fail).
import { getArguments, getEnvironment } from 'wasi:cli/environment@0.2.12';
import { getStdin } from 'wasi:cli/stdin@0.2.12';
import { exit } from 'wasi:cli/exit@0.2.12';

function readStdin() {
  const stream = getStdin();
  const chunks = [];
  for (;;) {
    try {
      chunks.push(stream.blockingRead(65536n));
    } catch (e) {
      break; // stream-error: closed at end of input
    }
  }
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const all = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

export const run = {
  run() {
    const args = getArguments().slice(1);
    const env = Object.fromEntries(getEnvironment());
    if (args.includes('--fail')) {
      console.error('jscomponent: failing on request');
      exit({ tag: 'err', val: undefined });
    }
    const name = args[0] || env.NAME || 'world';
    console.log(`Hello, ${name}, from JavaScript in a WASI preview 2 component!`);
    const text = readStdin();
    const words = text.toLowerCase().match(/[a-z0-9']+/g) || [];
    const lines = text === '' ? 0 : text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
    const counts = new Map();
    for (const w of words) counts.set(w, (counts.get(w) || 0) + 1);
    const top = [...counts.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, 3)
      .map(([w, n]) => `${w}=${n}`);
    console.log(`stdin: ${lines} lines, ${words.length} words; top: ${top.join(' ') || '-'}`);
  },
};
