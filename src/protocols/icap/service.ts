import { createHash } from 'node:crypto';
import type { IcapServiceConfig } from '../../config/schema.js';
import type { Verdict } from '../../core/verdict.js';
import type { Engine } from '../../engines/types.js';
import { loadTemplate, renderPage } from '../../policy/block-page.js';
import { decide, verdictReason, type Decision, type VerdictPolicy } from '../../policy/verdict-policy.js';
import type { ScanService } from '../../scan/types.js';
import { headerSafe, httpResponseHead } from './wire.js';

/**
 * One ICAP service as the connection sees it: its name and aliases, what it allows, the scanner it
 * uses, its policy and its pages. Built from config by the server; no sockets here.
 */
export class IcapService {
  readonly policy: VerdictPolicy;
  private readonly template: string;
  private istagCache: { value: string; at: number } | null = null;

  constructor(
    readonly name: string,
    readonly config: IcapServiceConfig,
    readonly scanner: ScanService,
    private readonly engines: Array<{ id: string; engine: Engine }>,
  ) {
    this.policy = { acceptStatus: config['accept-status'], blockStatus: config['block-status'] };
    this.template = loadTemplate(config['block-page']);
  }

  allows(method: 'REQMOD' | 'RESPMOD'): boolean {
    return this.config.methods.includes(method);
  }

  /**
   * ISTag: a digest of the engines' signature versions, so it changes whenever a database
   * update changes what the service would answer, and ICAP clients drop their cached answers.
   */
  async istag(): Promise<string> {
    const now = Date.now();
    if (this.istagCache && now - this.istagCache.at < 1000) return this.istagCache.value;
    const versions = await Promise.all(this.engines.map(async (e) => `${e.id}@${(await e.engine.signatureVersion().catch(() => null)) ?? '-'}`));
    const value = `"AVG-${createHash('sha256').update(versions.join(',')).digest('hex').slice(0, 24)}"`;
    this.istagCache = { value, at: now };
    return value;
  }

  decide(v: Verdict): Decision {
    return decide(v, this.policy);
  }

  /** The page a blocked object is replaced by: HTTP head + HTML body. */
  blockPage(v: Verdict, decision: Extract<Decision, { action: 'block' }>, url: string, who: { httpClient?: string; user?: string } = {}): { head: Buffer; body: Buffer } {
    const infected = v.status === 'found';
    const html = renderPage(this.template, {
      TITLE: infected ? 'Virus found: access denied' : v.status === 'error' ? 'Antivirus unavailable' : 'Content could not be checked',
      STATUS: v.status,
      REASON: decision.reason,
      VIRUS_NAMES: v.status === 'found' ? v.names.join(', ') : '-',
      URL: url,
      SERVICE: this.name,
      ENGINE: v.engine,
      SIGNATURE_VERSION: v.signatureVersion ?? 'unknown',
      TIME: new Date().toISOString(),
      CLIENT: who.httpClient ?? '-',
      USER: who.user ?? '-',
    });
    const body = Buffer.from(html, 'utf8');
    const reason = decision.httpStatus === 503 ? 'Service Unavailable' : decision.httpStatus === 403 ? 'Forbidden' : 'Blocked';
    const head = httpResponseHead(decision.httpStatus, reason, [
      ['Content-Type', 'text/html; charset=utf-8'],
      ['Content-Length', String(body.length)],
      ['Cache-Control', 'no-store'],
      ['Connection', 'close'],
      ['X-Avgate-Verdict', headerSafe(`${v.status}; ${verdictReason(v)}`)],
    ]);
    return { head, body };
  }
}

/** ICAP headers that tell the client what was found (the conventions c-icap, Symantec and Kaspersky use). */
export function infectionHeaders(v: Verdict, url: string): Array<[string, string]> {
  if (v.status !== 'found') return [];
  const names = v.names.map(headerSafe);
  const file = headerSafe(url || '-');
  const violations = names.map((n) => `\r\n\t${file}\r\n\t${n}\r\n\t0\r\n\t2`).join('');
  return [
    ['X-Infection-Found', `Type=0; Resolution=2; Threat=${names.join(', ')};`],
    ['X-Violations-Found', `${names.length}${violations}`],
    ['X-Virus-ID', names[0] ?? ''],
  ];
}
