import type { Socket } from 'node:net';

/**
 * The server side of a fake ICAP peer: reads what a client sends (lines, exact byte counts,
 * header blocks, chunked bodies), independent of avgate's own parsers.
 */
export class IcapPeer {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private closed = false;

  constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    sock.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    sock.on('error', () => undefined);
  }

  private async more(): Promise<void> {
    if (this.closed) throw new Error('peer closed');
    await new Promise<void>((r) => (this.waiter = r));
    this.waiter = null;
  }

  async line(): Promise<string> {
    for (;;) {
      const i = this.buf.indexOf('\r\n');
      if (i >= 0) {
        const l = this.buf.subarray(0, i).toString('latin1');
        this.buf = this.buf.subarray(i + 2);
        return l;
      }
      await this.more();
    }
  }

  async exact(n: number): Promise<Buffer> {
    while (this.buf.length < n) await this.more();
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Lines up to the empty one. */
  async head(): Promise<string[]> {
    const lines: string[] = [];
    for (;;) {
      const l = await this.line();
      if (l === '') return lines;
      lines.push(l);
    }
  }

  /** An ICAP head, then (RESPMOD) the encapsulated HTTP header it announces. */
  async request(): Promise<{ method: string; lines: string[]; http: string }> {
    const lines = await this.head();
    const enc = lines.find((l) => /^encapsulated:/i.test(l)) ?? '';
    const httpLength = Number(/res-body=(\d+)/.exec(enc)?.[1] ?? '0');
    const http = (await this.exact(httpLength)).toString('latin1');
    return { method: (lines[0] ?? '').split(' ')[0] ?? '', lines, http };
  }

  /** Chunks until the zero chunk; the data and whether it ended with ieof. */
  async chunks(): Promise<{ data: Buffer; ieof: boolean }> {
    const parts: Buffer[] = [];
    for (;;) {
      const sizeLine = await this.line();
      const size = parseInt(sizeLine, 16);
      if (size === 0) {
        await this.line();
        return { data: Buffer.concat(parts), ieof: /;\s*ieof/.test(sizeLine) };
      }
      parts.push(await this.exact(size));
      await this.line();
    }
  }
}
