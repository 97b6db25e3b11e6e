/**
 * A minimum rate in the manner of Apache mod_reqtimeout's `body=…,MinRate=…`: the time spent
 * waiting for a peer's bytes may add up to `baseMs`, plus 1 s for every `minRate` bytes it sent
 * (0 = no extension). Only waits are counted (`waited`): while the receiver is busy elsewhere (an
 * engine, a slow reader on the other side) the peer is held back, which is not its fault. Used by
 * the ICAP body meter (icap.body-timeout/body-min-rate) and FTP uploads (ftp-proxy.upload-min-rate).
 */
export class RateAllowance {
  private waitedMs = 0;
  private received = 0;

  constructor(
    readonly baseMs: number,
    readonly minRate: number,
  ) {}

  get bytes(): number {
    return this.received;
  }

  took(bytes: number): void {
    this.received += bytes;
  }

  waited(ms: number): void {
    this.waitedMs += ms;
  }

  /** Waiting time still allowed (may be negative). */
  leftMs(): number {
    return this.baseMs + (this.minRate > 0 ? (this.received * 1000) / this.minRate : 0) - this.waitedMs;
  }

  /** Why the allowance ran out, for the log and the error (`what`: "body", "upload"). */
  describe(what: string): string {
    if (this.minRate === 0) return `${what} not complete after ${this.baseMs} ms of waiting`;
    return `${what} slower than ${this.minRate} bytes/s: ${this.received} bytes after ${Math.round(this.baseMs + (this.received * 1000) / this.minRate)} ms of waiting`;
  }
}
