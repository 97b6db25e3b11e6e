/**
 * The benchmark's ICAP load generator: the least an ICAP RESPMOD client can do, used alike for
 * c-icap and avgate so that both are measured with the same client (and so that the client's own
 * cost stays as small as the direct clamd client's: no hashing, no copies of the object).
 *
 * One persistent connection (RFC 3507 4.3.3), one request at a time. The object travels as the
 * body of a synthetic `HTTP/1.1 200 OK` response, in chunks of at most 256 KiB, with backpressure.
 * Preview (4.5): the first N bytes, then `0; ieof` (the whole object fitted) or `0` and a wait for
 * `100 Continue` or a final answer. The response head is parsed just enough to classify it; an
 * echoed body is walked through its chunk framing and counted, never kept.
 */
import { connect, type Socket } from 'node:net';

export interface RespmodOptions {
  /** Bytes of preview, or null for none. */
  preview: number | null;
  /** Send `Allow: 204` (Squid does for bodies it knows are under 64 KB). */
  allow204: boolean;
  /** No progress (data received or sent) for this long fails the request; default 30 s. */
  idleTimeoutMs?: number;
}

export interface RespmodOutcome {
  status: 'free' | 'found' | 'other';
  detail: string;
  /** ICAP status of the final response. */
  icapStatus: number;
  /** Object bytes echoed in a 200 response (0 for 204). */
  echoedBytes: number;
  /** True when the final response head arrived before the object was sent to its end (early response). */
  earlyAnswer: boolean;
}

/** Where the object's bytes come from: a buffer, or a generator of pieces (for the 2 GiB object). */
export type BodySource = Buffer | { size: number | undefined; pieces: () => Iterable<Buffer> | AsyncIterable<Buffer> };

const CHUNK = 256 * 1024;
const CRLF = Buffer.from('\r\n', 'latin1');
const LAST = Buffer.from('0\r\n\r\n', 'latin1');
const LAST_IEOF = Buffer.from('0; ieof\r\n\r\n', 'latin1');

type HeadEvent = { kind: 'head'; status: number; statusLine: string; headers: string; http: string | null; hasBody: boolean };

/**
 * Incremental response reader: heads (100 Continue and final) and the final response's
 * encapsulated header section and chunked body. Pure state machine over pushed data.
 */
class ResponseReader {
  private buf: Buffer = Buffer.alloc(0);
  private state: 'head' | 'sections' | 'chunk-size' | 'chunk-data' | 'chunk-crlf' | 'trailer' = 'head';
  private sectionsLength = 0;
  private pending: Omit<HeadEvent, 'http' | 'kind'> | null = null;
  private chunkLeft = 0;
  bodyBytes = 0;
  onHead: (h: HeadEvent) => void = () => undefined;
  onEnd: () => void = () => undefined;
  onError: (message: string) => void = () => undefined;

  reset(): void {
    this.state = 'head';
    this.pending = null;
    this.bodyBytes = 0;
  }

  /** Bytes left unread after the response ended (pipelining is not used: must be none). */
  get leftover(): number {
    return this.buf.length;
  }

  push(data: Buffer): void {
    this.buf = this.buf.length === 0 ? data : Buffer.concat([this.buf, data]);
    for (;;) {
      switch (this.state) {
        case 'head': {
          const end = this.buf.indexOf('\r\n\r\n');
          if (end < 0) {
            if (this.buf.length > 65536) return this.onError('response head over 64 KiB');
            return;
          }
          const text = this.buf.toString('latin1', 0, end);
          this.buf = this.buf.subarray(end + 4);
          const nl = text.indexOf('\r\n');
          const statusLine = nl < 0 ? text : text.slice(0, nl);
          const headers = nl < 0 ? '' : text.slice(nl + 2);
          const m = /^ICAP\/1\.0 (\d{3})/.exec(statusLine);
          if (!m) return this.onError(`not an ICAP status line: ${statusLine.slice(0, 100)}`);
          const status = Number(m[1]);
          if (status === 100) {
            this.onHead({ kind: 'head', status, statusLine, headers, http: null, hasBody: false });
            continue;
          }
          // Encapsulated: offsets of the sections; the last entity is the body (or null-body).
          const enc = /^Encapsulated:[ \t]*(.*)$/im.exec(headers)?.[1] ?? '';
          const parts = enc.split(',').map((s) => s.trim()).filter(Boolean);
          const last = parts[parts.length - 1];
          const lastOffset = last ? Number(last.slice(last.indexOf('=') + 1)) : 0;
          const hasBody = last !== undefined && !last.startsWith('null-body');
          this.pending = { status, statusLine, headers, hasBody };
          this.sectionsLength = Number.isFinite(lastOffset) ? lastOffset : 0;
          this.state = 'sections';
          continue;
        }
        case 'sections': {
          if (this.buf.length < this.sectionsLength) return;
          const http = this.sectionsLength > 0 ? this.buf.toString('latin1', 0, this.sectionsLength) : null;
          this.buf = this.buf.subarray(this.sectionsLength);
          const p = this.pending as Omit<HeadEvent, 'http' | 'kind'>;
          this.onHead({ kind: 'head', ...p, http });
          if (!p.hasBody) {
            this.state = 'head';
            this.onEnd();
            continue;
          }
          this.state = 'chunk-size';
          continue;
        }
        case 'chunk-size': {
          const nl = this.buf.indexOf('\r\n');
          if (nl < 0) return;
          const line = this.buf.toString('latin1', 0, nl);
          this.buf = this.buf.subarray(nl + 2);
          const size = parseInt(line, 16);
          if (!Number.isFinite(size) || size < 0) return this.onError(`bad chunk size line ${JSON.stringify(line.slice(0, 40))}`);
          if (size === 0) {
            this.state = 'trailer';
            continue;
          }
          this.chunkLeft = size;
          this.state = 'chunk-data';
          continue;
        }
        case 'chunk-data': {
          if (this.buf.length === 0) return;
          const n = Math.min(this.chunkLeft, this.buf.length);
          this.chunkLeft -= n;
          this.bodyBytes += n;
          this.buf = this.buf.subarray(n);
          if (this.chunkLeft === 0) this.state = 'chunk-crlf';
          continue;
        }
        case 'chunk-crlf': {
          if (this.buf.length < 2) return;
          this.buf = this.buf.subarray(2);
          this.state = 'chunk-size';
          continue;
        }
        case 'trailer': {
          if (this.buf.length < 2) return;
          if (this.buf[0] === 13 && this.buf[1] === 10) {
            this.buf = this.buf.subarray(2);
            this.state = 'head';
            this.onEnd();
            continue;
          }
          const end = this.buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          this.buf = this.buf.subarray(end + 4);
          this.state = 'head';
          this.onEnd();
          continue;
        }
      }
    }
  }
}

function httpStatusOf(http: string | null): number | null {
  const m = http ? /^HTTP\/\d\.\d (\d{3})/.exec(http) : null;
  return m ? Number(m[1]) : null;
}

/** A threat name from the usual headers (X-Infection-Found, X-Virus-ID, X-Violations-Found). */
function threatOf(headers: string, http: string | null): string | null {
  const inf = /^X-Infection-Found:.*?Threat=([^;\r\n]*)/im.exec(headers);
  if (inf?.[1]) return inf[1].trim();
  const vid = /^X-Virus-ID:[ \t]*(.+)$/im.exec(headers);
  if (vid?.[1]) return vid[1].trim();
  if (/^X-Violations-Found:[ \t]*[1-9]/im.test(headers)) return 'violation';
  if (http && /^X-Virus-ID:[ \t]*(.+)$/im.test(http)) return 'http-virus-id';
  return null;
}

/**
 * One persistent connection to an ICAP server. `respmod` sends one request and resolves with its
 * classified outcome; a connection that broke or went out of step is reopened by the next call.
 */
export class IcapBenchClient {
  private socket: Socket | null = null;
  private connecting: Promise<Socket> | null = null;
  private readonly reader = new ResponseReader();
  private readonly hostPort: string;

  constructor(
    readonly port: number,
    readonly service: string,
    readonly host = '127.0.0.1',
  ) {
    this.hostPort = `${host}:${port}`;
  }

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }

  private open(): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    this.connecting ??= new Promise<Socket>((resolve, reject) => {
      const s = connect(this.port, this.host);
      s.setNoDelay(true);
      s.once('connect', () => {
        s.off('error', reject);
        this.socket = s;
        this.reader.reset();
        s.on('error', () => undefined); // reported through the request that is in flight
        resolve(s);
      });
      s.once('error', reject);
    }).finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  private head(size: number | undefined, o: RespmodOptions): Buffer {
    const http = `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n${size !== undefined ? `Content-Length: ${size}\r\n` : ''}\r\n`;
    return Buffer.from(
      `RESPMOD icap://${this.hostPort}${this.service} ICAP/1.0\r\n` +
        `Host: ${this.hostPort}\r\n` +
        (o.allow204 ? 'Allow: 204\r\n' : '') +
        (o.preview !== null ? `Preview: ${o.preview}\r\n` : '') +
        `Encapsulated: res-hdr=0, res-body=${Buffer.byteLength(http, 'latin1')}\r\n\r\n` +
        http,
      'latin1',
    );
  }

  async respmod(body: BodySource, o: RespmodOptions): Promise<RespmodOutcome> {
    const socket = await this.open();
    const reader = this.reader;
    reader.reset();
    const size = Buffer.isBuffer(body) ? body.length : body.size;

    let final: HeadEvent | null = null;
    let continued = false;
    let ended = false;
    let failure: string | null = null;
    let sentAll = false;
    let earlyAnswer = false;
    let wake: (() => void) | null = null;
    const notify = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    const changed = () => new Promise<void>((r) => (wake = r));

    reader.onHead = (h) => {
      if (h.status === 100) continued = true;
      else final = h;
      notify();
    };
    reader.onEnd = () => {
      ended = true;
      notify();
    };
    reader.onError = (m) => {
      failure ??= m;
      socket.destroy();
      notify();
    };
    // Inactivity timer: a stalled server fails the request instead of hanging the benchmark.
    const idleMs = o.idleTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | null = null;
    const touch = () => {
      if (timer) timer.refresh();
      else
        timer = setTimeout(() => {
          failure ??= `no progress for ${idleMs} ms (${final ? 'response incomplete' : continued ? 'after 100 Continue' : 'no response head'}, ${reader.bodyBytes} body bytes read)`;
          socket.destroy();
          notify();
        }, idleMs);
    };
    touch();
    const onData = (d: Buffer) => {
      touch();
      reader.push(d);
    };
    const onClose = () => {
      if (!ended) failure ??= 'connection closed before the response ended';
      notify();
    };
    const onDrain = () => {
      touch();
      notify();
    };
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('drain', onDrain);

    const alive = () => !socket.destroyed && failure === null;
    const write = async (...parts: Buffer[]) => {
      if (!alive()) return;
      socket.cork();
      let ok = true;
      for (const p of parts) ok = socket.write(p);
      socket.uncork();
      while (!ok && alive() && socket.writableNeedDrain) await changed();
    };
    const writeData = async (data: Buffer) => {
      for (let off = 0; off < data.length && alive(); off += CHUNK) {
        const part = data.length <= CHUNK ? data : data.subarray(off, Math.min(data.length, off + CHUNK));
        await write(Buffer.from(`${part.length.toString(16)}\r\n`, 'latin1'), part, CRLF);
      }
    };

    try {
      const head = this.head(size, o);
      if (Buffer.isBuffer(body)) {
        if (o.preview !== null) {
          const pv = body.subarray(0, o.preview);
          const whole = pv.length === body.length;
          await write(
            head,
            ...(pv.length > 0 ? [Buffer.from(`${pv.length.toString(16)}\r\n`, 'latin1'), pv, CRLF] : []),
            whole ? LAST_IEOF : LAST,
          );
          if (whole) sentAll = true;
          else {
            while (!continued && final === null && alive()) await changed();
            if (continued && final === null) {
              await writeData(body.subarray(pv.length));
              earlyAnswer = final !== null;
              await write(LAST);
            }
            // a final answer within the preview completes the request as it stands
            sentAll = alive();
          }
        } else {
          await write(head);
          await writeData(body);
          earlyAnswer = final !== null;
          await write(LAST);
          sentAll = alive();
        }
      } else {
        // Streamed source: preview from the first piece(s), then the rest as it comes.
        await write(head);
        const it = body.pieces();
        let previewLeft = o.preview;
        let awaitingContinue = o.preview !== null;
        const previewParts: Buffer[] = [];
        let stopped = false;
        for await (const piece of it as AsyncIterable<Buffer>) {
          if (!alive()) break;
          if (previewLeft !== null && previewLeft > 0) {
            const take = piece.subarray(0, previewLeft);
            previewParts.push(take);
            previewLeft -= take.length;
            const rest = piece.subarray(take.length);
            if (previewLeft > 0) continue;
            const pv = Buffer.concat(previewParts);
            await write(Buffer.from(`${pv.length.toString(16)}\r\n`, 'latin1'), pv, CRLF, LAST);
            previewLeft = null;
            while (!continued && final === null && alive()) await changed();
            awaitingContinue = false;
            if (!continued || final !== null) {
              stopped = true;
              break;
            }
            if (rest.length > 0) await writeData(rest);
            continue;
          }
          await writeData(piece);
        }
        if (!stopped && alive()) {
          if (awaitingContinue) {
            // the whole object fitted into the preview
            const pv = Buffer.concat(previewParts);
            await write(...(pv.length > 0 ? [Buffer.from(`${pv.length.toString(16)}\r\n`, 'latin1'), pv, CRLF] : []), LAST_IEOF);
          } else {
            earlyAnswer = final !== null;
            await write(LAST);
          }
          sentAll = alive();
        } else if (stopped) sentAll = true; // answered within the preview: the request is complete
      }
      while (!ended && failure === null) await changed();
    } finally {
      if (timer) clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('drain', onDrain);
    }

    const f = final as HeadEvent | null;
    if (failure !== null || !f) {
      this.close();
      return { status: 'other', detail: failure ?? 'no response', icapStatus: 0, echoedBytes: reader.bodyBytes, earlyAnswer: false };
    }
    if (!sentAll || reader.leftover > 0 || /^Connection:[ \t]*close/im.test(f.headers)) this.close();

    const echoed = reader.bodyBytes;
    const threat = threatOf(f.headers, f.http);
    const httpStatus = httpStatusOf(f.http);
    let status: RespmodOutcome['status'] = 'other';
    let detail = f.statusLine;
    if (threat !== null) {
      status = 'found';
      detail = `${f.status} ${threat}`;
    } else if (f.status === 204) {
      status = 'free';
    } else if (f.status === 200) {
      if (httpStatus === 403) {
        status = 'found';
        detail = '200 with HTTP 403';
      } else if (httpStatus === 200 && (size === undefined || echoed === size)) {
        status = 'free';
        detail = `200 echo ${echoed} bytes`;
      } else detail = `200 HTTP ${httpStatus ?? '?'} echo ${echoed}/${size ?? '?'} bytes`;
    }
    return { status, detail, icapStatus: f.status, echoedBytes: echoed, earlyAnswer };
  }
}
