import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ResponseParser, type IcapResponseHead } from '../../src/engines/icap/protocol.js';

export interface IcapTestResponse {
  head: IcapResponseHead;
  sections: Record<string, Buffer>;
  body: Buffer;
}

export interface Exchange {
  responses: IcapTestResponse[];
  /** True when the server closed the connection. */
  closed: boolean;
  /** Bytes received that did not parse as ICAP (a server bug), with the parser's message. */
  error: string | null;
  /** performance.now() when each response head arrived, and when each piece was written. */
  headAt: number[];
  sentAt: number[];
  /** A response that had started but not ended when the exchange stopped (body so far). */
  partial: IcapTestResponse | null;
  /** Body bytes received by the time each piece after the first was written. */
  bodyBytesAtSend: number[];
}

/**
 * A raw ICAP conversation for tests: writes `pieces` (with an optional pause between them), then
 * collects responses until `count` final responses arrived, the server closed, or `timeoutMs`.
 * 100 Continue responses are collected too (they are responses on the wire).
 */
export async function icapExchange(
  port: number,
  pieces: Array<Buffer | string>,
  opts: { count?: number; timeoutMs?: number; pauseMs?: number; keepOpen?: boolean; socket?: Socket } = {},
): Promise<Exchange & { socket: Socket }> {
  const socket = opts.socket ?? connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  const parser = new ResponseParser();
  const responses: IcapTestResponse[] = [];
  let current: IcapTestResponse | null = null;
  let closed = false;
  let error: string | null = null;
  let finals = 0;
  const headAt: number[] = [];
  const sentAt: number[] = [];
  const bodyBytesAtSend: number[] = [];
  const want = opts.count ?? 1;
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, opts.timeoutMs ?? 10_000);
    const finish = () => {
      clearTimeout(timer);
      resolve();
    };
    socket.on('data', (d: Buffer) => {
      for (const ev of parser.push(d)) {
        if (ev.type === 'head') {
          current = { head: ev.head, sections: {}, body: Buffer.alloc(0) };
          headAt.push(performance.now());
        }
        else if (ev.type === 'section' && current) current.sections[ev.name] = ev.data;
        else if (ev.type === 'body' && current) current.body = Buffer.concat([current.body, ev.data]);
        else if (ev.type === 'end' && current) {
          responses.push(current);
          if (current.head.status !== 100) finals++;
          current = null;
          if (finals >= want && !opts.keepOpen) finish();
        } else if (ev.type === 'error') {
          error = ev.message;
          finish();
        }
      }
    });
    socket.on('close', () => {
      closed = true;
      finish();
    });
  });
  if (!opts.socket) await new Promise<void>((r) => socket.once('connect', () => r()));
  for (const p of pieces) {
    sentAt.push(performance.now());
    bodyBytesAtSend.push((current as IcapTestResponse | null)?.body.length ?? 0);
    socket.write(typeof p === 'string' ? Buffer.from(p, 'latin1') : p);
    if (opts.pauseMs) await new Promise((r) => setTimeout(r, opts.pauseMs));
  }
  await done;
  return { responses, closed, error, socket, headAt, sentAt, partial: current, bodyBytesAtSend };
}

export function chunked(data: Buffer, opts: { ieof?: boolean; chunkSize?: number } = {}): Buffer {
  const parts: Buffer[] = [];
  const size = opts.chunkSize ?? 65536;
  for (let off = 0; off < data.length; off += size) {
    const c = data.subarray(off, off + size);
    parts.push(Buffer.from(`${c.length.toString(16)}\r\n`), c, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(opts.ieof ? '0; ieof\r\n\r\n' : '0\r\n\r\n'));
  return Buffer.concat(parts);
}

export interface BuiltRequest {
  /** Head plus, without preview, the whole chunked body; with preview, the preview chunks. */
  first: Buffer;
  /** With a preview that did not hold the whole body: the rest, to send after 100 Continue. */
  rest: Buffer | null;
}

/** A RESPMOD (or REQMOD) request carrying `body` as the response to (or body of) a request for `url`. */
export function buildRequest(
  port: number,
  body: Buffer | null,
  opts: {
    method?: 'RESPMOD' | 'REQMOD';
    service?: string;
    allow204?: boolean;
    preview?: number;
    url?: string;
    extraHeaders?: string[];
    close?: boolean;
    contentLength?: boolean;
    /** Request target written as it is (no URL normalisation). */
    rawTarget?: string;
    /** More lines of the encapsulated HTTP response head (RESPMOD), e.g. `Content-Encoding: br`. */
    resHeaders?: string[];
    /** The encapsulated response's status line (RESPMOD); default `HTTP/1.1 200 OK`. */
    resStatus?: string;
    /** More lines of the encapsulated HTTP request head, e.g. `Range: bytes=0-99`. */
    reqHeaders?: string[];
  } = {},
): BuiltRequest {
  const method = opts.method ?? 'RESPMOD';
  const url = new URL(opts.url ?? 'http://origin.test/file.bin');
  const target = opts.rawTarget ?? `${url.pathname}${url.search}`;
  const cl = opts.contentLength === false || body === null ? '' : `Content-Length: ${body.length}\r\n`;
  const reqHdr = `${method === 'REQMOD' && body !== null ? 'POST' : 'GET'} ${target} HTTP/1.1\r\nHost: ${url.host}\r\n${(opts.reqHeaders ?? []).map((h) => `${h}\r\n`).join('')}${method === 'REQMOD' ? cl : ''}\r\n`;
  const resHdr = `${opts.resStatus ?? 'HTTP/1.1 200 OK'}\r\nContent-Type: application/octet-stream\r\n${(opts.resHeaders ?? []).map((h) => `${h}\r\n`).join('')}${cl}\r\n`;
  const bodyName = body === null ? 'null-body' : method === 'REQMOD' ? 'req-body' : 'res-body';
  const enc =
    method === 'REQMOD' ? `req-hdr=0, ${bodyName}=${reqHdr.length}` : `req-hdr=0, res-hdr=${reqHdr.length}, ${bodyName}=${reqHdr.length + resHdr.length}`;
  const head = [
    `${method} icap://127.0.0.1:${port}/${opts.service ?? 'avscan'} ICAP/1.0`,
    `Host: 127.0.0.1:${port}`,
    `Encapsulated: ${enc}`,
    ...(opts.allow204 ? ['Allow: 204'] : []),
    ...(opts.preview !== undefined ? [`Preview: ${opts.preview}`] : []),
    ...(opts.close ? ['Connection: close'] : []),
    ...(opts.extraHeaders ?? []),
  ].join('\r\n');
  const headBuf = Buffer.from(`${head}\r\n\r\n${reqHdr}${method === 'REQMOD' ? '' : resHdr}`, 'latin1');
  if (body === null) return { first: headBuf, rest: null };
  if (opts.preview === undefined) return { first: Buffer.concat([headBuf, chunked(body)]), rest: null };
  const pv = body.subarray(0, opts.preview);
  const complete = pv.length === body.length;
  return {
    first: Buffer.concat([headBuf, chunked(pv, { ieof: complete })]),
    rest: complete ? null : chunked(body.subarray(opts.preview)),
  };
}

/**
 * A slow client: writes `data` in pieces of `size` bytes, one every `everyMs`, until all is sent,
 * `stop()` says so or the socket is closed. Resolves with the bytes written.
 */
export async function trickle(s: Socket, data: Buffer, size: number, everyMs: number, stop: () => boolean = () => false): Promise<number> {
  let sent = 0;
  while (sent < data.length && !stop() && !s.destroyed && s.writable) {
    s.write(data.subarray(sent, sent + size));
    sent += Math.min(size, data.length - sent);
    await sleep(everyMs);
  }
  return sent;
}
