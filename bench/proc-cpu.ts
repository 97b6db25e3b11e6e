/** CPU time (user + system) of a process and its descendants, read from /proc (Linux). */
import { readdir, readFile } from 'node:fs/promises';

const TICK_MS = 10; // USER_HZ is 100 on Linux

interface Stat {
  pid: number;
  ppid: number;
  ms: number;
}

async function readStat(pid: number): Promise<Stat | null> {
  try {
    const s = await readFile(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // fields after the name: state(3) ppid(4) ... utime(14) stime(15) → indexes 0-based from state
    const ppid = Number(rest[1]);
    const ms = (Number(rest[11]) + Number(rest[12])) * TICK_MS;
    return { pid, ppid, ms };
  } catch {
    return null;
  }
}

/** Milliseconds of CPU used so far by `root` and every live descendant. */
export async function treeCpuMs(root: number): Promise<number> {
  const stats: Stat[] = [];
  for (const name of await readdir('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const st = await readStat(pid);
    if (st) stats.push(st);
  }
  const inTree = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const s of stats) {
      if (!inTree.has(s.pid) && inTree.has(s.ppid)) {
        inTree.add(s.pid);
        grew = true;
      }
    }
  }
  return stats.filter((s) => inTree.has(s.pid)).reduce((a, s) => a + s.ms, 0);
}
