/**
 * Summary of a V8 CPU profile (`node --cpu-prof`, or `npm run bench -- --profile-avgate DIR`):
 * the functions with the most self time, and with the most total (inclusive) time, in ms and
 * percent of the sampled time.
 *
 *   npx tsx bench/cpuprofile-top.ts FILE.cpuprofile [--top N] [--filter TEXT] [--callers TEXT]
 *
 * --filter keeps only functions whose location contains TEXT (e.g. `src/` for avgate's own code).
 * --callers TEXT: for the functions whose label contains TEXT, their self time split by the
 * nearest caller in avgate's code (src/), e.g. `--callers update` for hashing.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function label(n: ProfileNode): string {
  const f = n.callFrame;
  let where = f.url;
  if (where.startsWith('file://')) where = relative(process.cwd(), fileURLToPath(where));
  const name = f.functionName || '(anonymous)';
  return where ? `${name} ${where}:${f.lineNumber + 1}` : name;
}

function main(): void {
  const file = process.argv[2];
  if (!file || file.startsWith('--')) throw new Error('usage: cpuprofile-top FILE.cpuprofile [--top N] [--filter TEXT]');
  const top = Number(arg('--top') ?? 30);
  const filter = arg('--filter');
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  // Self time per node from the samples (each sample's delta is charged to the sampled node).
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i] as number;
    const dt = p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, dt));
  }
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const idle = p.nodes.filter((n) => n.callFrame.functionName === '(idle)').reduce((a, n) => a + (selfUs.get(n.id) ?? 0), 0);

  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const l = label(node);
    self.set(l, (self.get(l) ?? 0) + us);
    // Inclusive: every distinct function on the stack once.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur);
      if (!n) break;
      const ln = label(n);
      if (seen.has(ln)) continue;
      seen.add(ln);
      incl.set(ln, (incl.get(ln) ?? 0) + us);
    }
  }
  const busy = total - idle;
  const callers = arg('--callers');
  if (callers) {
    // Self time of matching nodes, by the first frame up the stack that is in src/ (or the root).
    const by = new Map<string, number>();
    for (const [id, us] of selfUs) {
      const node = byId.get(id);
      if (!node || !label(node).includes(callers)) continue;
      let owner = '(no src/ frame)';
      const chain: string[] = [];
      for (let cur = parent.get(id); cur !== undefined; cur = parent.get(cur)) {
        const n = byId.get(cur);
        if (!n) break;
        const l = label(n);
        if (l.includes('src/')) {
          chain.push(l);
          if (chain.length === 2) break;
        }
      }
      if (chain.length > 0) owner = chain.join(' <- ');
      by.set(owner, (by.get(owner) ?? 0) + us);
    }
    process.stdout.write(`\ncallers of "${callers}" (self time, by the nearest two src/ frames)\n`);
    for (const [l, us] of [...by.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      process.stdout.write(`${(us / 1000).toFixed(1).padStart(9)} ms ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${l}\n`);
    }
    return;
  }
  const show = (title: string, m: Map<string, number>) => {
    process.stdout.write(`\n${title}\n`);
    const rows = [...m.entries()]
      .filter(([l]) => !filter || l.includes(filter))
      .filter(([l]) => !l.startsWith('(root)') && !l.startsWith('(idle)'))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top);
    for (const [l, us] of rows) {
      process.stdout.write(`${(us / 1000).toFixed(1).padStart(9)} ms ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${l}\n`);
    }
  };
  process.stdout.write(
    `${file}: ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s profiled, ${(busy / 1000).toFixed(0)} ms busy (${((100 * busy) / total).toFixed(0)}%), ${(idle / 1000).toFixed(0)} ms idle\n`,
  );
  show('self time (percent of busy time)', self);
  show('total time (inclusive)', incl);
}

main();
