import { Base64Decoder } from './decoders.js';
import { rawText } from './headers.js';

/**
 * Finds uuencoded files in decoded text: `begin 644 name` ... `end` (and `begin-base64` ...
 * `====`, uuencode -m). Old mailers and news gateways attach files this way, inside a text part,
 * and a scanner given only the text would not see the file. Each block is decoded on its own.
 */
export type UuEvent =
  | { type: 'begin'; name: string | null; base64: boolean }
  | { type: 'data'; data: Buffer }
  /** complete: the closing line was seen; error: the first fault inside the block. */
  | { type: 'end'; complete: boolean; error: string | null };

const LF = 0x0a;
const CR = 0x0d;
const NL_BEGIN = Buffer.from('\nbegin');
const BEGIN = Buffer.from('begin');
/** A `begin` line longer than this is not one (it would have to hold a long file name). */
const MAX_BEGIN_LINE = 1024;
const BEGIN_LINE = /^begin(-base64)?[ \t]+[0-7]{1,4}[ \t]+(.*?)[ \t]*$/;

/**
 * Decodes one uuencoded line (without its line break) into out at `at`. Never writes more than
 * one byte per input byte plus three. `bad`: characters outside the uu alphabet, or a line too
 * short for its length character.
 */
export function decodeUuLine(b: Buffer, s: number, e: number, out: Buffer, at: number): { n: number; bad: boolean } {
  let n = at;
  if (s >= e) return { n, bad: false };
  const count = ((b[s] as number) - 32) & 63;
  if (count === 0) return { n, bad: false };
  let bad = false;
  let groups = Math.ceil(count / 3);
  let left = count;
  // Encoders that strip trailing blanks shorten lines whose data ends in zero bytes: missing
  // characters count as blanks. A line far too short is not uu data: only what it holds is decoded.
  const avail = e - s - 1;
  if (avail < groups * 4 - 3) {
    bad = true;
    groups = Math.ceil(avail / 4);
    left = Math.min(left, groups * 3);
  }
  let p = s + 1;
  for (let g = 0; g < groups; g++) {
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const c = p < e ? (b[p] as number) : 32;
      if (c < 32 || c > 96) bad = true;
      v = (v << 6) | ((c - 32) & 63);
      p++;
    }
    out[n++] = (v >> 16) & 0xff;
    if (left > 1) out[n++] = (v >> 8) & 0xff;
    if (left > 2) out[n++] = v & 0xff;
    left -= 3;
  }
  return { n, bad };
}

export class UuScanner {
  private carry: Buffer | null = null;
  private lineStart = true;
  private inBlock = false;
  private b64: Base64Decoder | null = null;
  private error: string | null = null;
  private skipToEol = false;

  constructor(private readonly maxLineLength: number) {}

  write(chunk: Buffer): UuEvent[] {
    const buf = this.carry ? Buffer.concat([this.carry, chunk]) : chunk;
    this.carry = null;
    const events: UuEvent[] = [];
    this.run(buf, false, events);
    return events;
  }

  end(): UuEvent[] {
    const buf = this.carry;
    this.carry = null;
    const events: UuEvent[] = [];
    if (buf) this.run(buf, true, events);
    if (this.inBlock) this.close(false, events, 'no end line');
    return events;
  }

  private close(complete: boolean, events: UuEvent[], error: string | null): void {
    if (this.b64) {
      const tail = this.b64.end();
      if (tail.length > 0) events.push({ type: 'data', data: tail });
      this.error ??= this.b64.error;
    }
    events.push({ type: 'end', complete, error: this.error ?? error });
    this.inBlock = false;
    this.b64 = null;
    this.error = null;
  }

  private run(buf: Buffer, final: boolean, events: UuEvent[]): void {
    const end = buf.length;
    let pos = 0;
    while (pos < end) {
      if (!this.inBlock) {
        if (this.lineStart) {
          const avail = Math.min(end - pos, BEGIN.length);
          if (buf.compare(BEGIN, 0, avail, pos, pos + avail) === 0) {
            if (avail < BEGIN.length && !final) {
              this.carry = buf.subarray(pos);
              return;
            }
            let nl = buf.indexOf(LF, pos);
            if (nl < 0 && end - pos <= MAX_BEGIN_LINE && !final) {
              this.carry = buf.subarray(pos);
              return;
            }
            if (nl < 0 && final) nl = end;
            if (nl >= 0 && nl - pos <= MAX_BEGIN_LINE) {
              const m = BEGIN_LINE.exec(rawText(buf.subarray(pos, nl > pos && buf[nl - 1] === CR ? nl - 1 : nl)));
              if (m) {
                const name = m[2] ?? '';
                events.push({ type: 'begin', name: name.length > 0 ? name : null, base64: m[1] !== undefined });
                this.inBlock = true;
                this.b64 = m[1] !== undefined ? new Base64Decoder() : null;
                this.lineStart = true;
                pos = nl + 1;
                continue;
              }
            }
          }
          this.lineStart = false;
        }
        const q = buf.indexOf(NL_BEGIN, pos);
        if (q >= 0) {
          pos = q + 1;
          this.lineStart = true;
          continue;
        }
        // The chunk may end inside "\nbegin": keep that tail.
        let t = -1;
        for (let k = end - 1; k >= Math.max(pos, end - BEGIN.length); k--) {
          if (buf[k] === LF) {
            t = k;
            break;
          }
        }
        if (t >= 0 && !final) {
          const tail = end - t - 1;
          if (tail === 0) this.lineStart = true;
          else if (buf.compare(BEGIN, 0, tail, t + 1, end) === 0) {
            this.lineStart = true;
            this.carry = buf.subarray(t + 1);
          }
        }
        return;
      }
      // inside a block: line by line
      let nl = buf.indexOf(LF, pos);
      if (this.skipToEol) {
        if (nl < 0) return;
        this.skipToEol = false;
        pos = nl + 1;
        continue;
      }
      if (nl < 0) {
        if (!final) {
          if (end - pos > this.maxLineLength) {
            this.error ??= 'uuencoded line too long';
            this.skipToEol = true;
            return;
          }
          this.carry = buf.subarray(pos);
          return;
        }
        nl = end;
      }
      let e = nl > pos && buf[nl - 1] === CR ? nl - 1 : nl;
      const trimmedEnd = trimEnd(buf, pos, e);
      if (this.b64) {
        if (trimmedEnd - pos === 4 && buf.toString('latin1', pos, trimmedEnd) === '====') {
          this.close(true, events, null);
        } else {
          const data = this.b64.write(buf.subarray(pos, e));
          if (data.length > 0) events.push({ type: 'data', data });
        }
      } else if (trimmedEnd - pos === 3 && buf.toString('latin1', pos, trimmedEnd) === 'end') {
        this.close(true, events, null);
      } else {
        // Lines are short: decode line by line until the next that cannot be uu data ends the run.
        const out = Buffer.allocUnsafe((end - pos) * 2 + 64);
        let n = 0;
        let p = pos;
        while (true) {
          if (e > p) {
            const r = decodeUuLine(buf, p, e, out, n);
            if (r.bad) this.error ??= 'invalid uuencoded line';
            n = r.n;
          }
          p = nl + 1;
          if (p >= end) break;
          const next = buf.indexOf(LF, p);
          if (next < 0) break;
          e = next > p && buf[next - 1] === CR ? next - 1 : next;
          const te = trimEnd(buf, p, e);
          if (te - p === 3 && buf.toString('latin1', p, te) === 'end') break;
          nl = next;
        }
        if (n > 0) events.push({ type: 'data', data: out.subarray(0, n) });
      }
      pos = nl + 1;
    }
  }
}

function trimEnd(buf: Buffer, s: number, e: number): number {
  let t = e;
  while (t > s && (buf[t - 1] === 0x20 || buf[t - 1] === 0x09)) t--;
  return t;
}
