import { contentKindOf } from './wire.js';

/**
 * Partial fetches of content (`BODY.PEEK[]<0.65536>`, `BODY[2]<o.n>`, `BINARY[]<o.n>`) are not
 * relayed as pieces: a piece cut out of the middle of a base64 attachment decodes to nothing an
 * engine recognises, so a client that reads in chunks (Thunderbird's default) would get an
 * infected attachment whole, piece by piece. The proxy asks the server for the whole section
 * instead, scans it as a whole fetch, and answers each piece from the result (which is what a
 * whole fetch would deliver, infected documents replaced). Only parsing here; the session does
 * the I/O.
 */

/** What one FETCH command asked of a content section: the whole, and pieces of it. */
export interface SectionWant {
  whole: boolean;
  ranges: Array<{ origin: number; length: number }>;
}

/** Per section, by the name the server echoes (upper case): `BODY[]`, `BODY[2]`, `BINARY[1.TEXT]`, `RFC822`. */
export type FetchPlan = Map<string, SectionWant>;

// BODY[...] / BINARY[...] with an optional <origin.length>, or RFC822 / RFC822.TEXT, as items of
// a FETCH attribute list (not inside another name).
const ITEM = /(?<![A-Za-z0-9.])(?:(BODY|BINARY)(\.PEEK)?\[([^\]]*)\](?:<(\d+)\.(\d+)>)?|(RFC822(?:\.TEXT)?)(?![A-Za-z0-9.]))/gi;

/**
 * The content sections a FETCH command's arguments (after `FETCH` / `UID FETCH`) ask for, and the
 * arguments to send instead: every partial item of a content section becomes one item for the
 * whole section (none when the whole is asked for already). `rest` is unchanged when nothing is
 * partial; `plan` is empty when no content is asked for.
 */
export function planFetch(rest: string): { rest: string; plan: FetchPlan } {
  const plan: FetchPlan = new Map();
  const partials: Array<{ key: string; start: number; end: number; peek: boolean; name: string; section: string }> = [];
  /** Sections asked for whole with PEEK only (a plain piece of one must still set \Seen). */
  const wholePeek = new Map<string, boolean>();
  for (const m of rest.matchAll(ITEM)) {
    const name = (m[1] ?? m[6] ?? '').toUpperCase();
    const section = m[3] ?? '';
    const key = m[6] !== undefined ? name : `${name}[${section.toUpperCase()}]`;
    if (contentKindOf(key).kind === 'other') continue;
    const want = plan.get(key) ?? { whole: false, ranges: [] };
    plan.set(key, want);
    if (m[4] === undefined) {
      want.whole = true;
      wholePeek.set(key, (wholePeek.get(key) ?? true) && m[2] !== undefined);
      continue;
    }
    want.ranges.push({ origin: Number(m[4]), length: Number(m[5]) });
    partials.push({ key, start: m.index, end: m.index + m[0].length, peek: m[2] !== undefined, name, section });
  }
  if (partials.length === 0) return { rest, plan };
  // From the end, so earlier offsets stay valid: the first partial of a section not asked for
  // whole becomes the whole item (PEEK only when every piece was asked with PEEK: a plain
  // BODY[]<o.n> sets \Seen, and so must its replacement); so does the first plain piece of a
  // section asked for whole with PEEK only; the others go, with a space beside them.
  let out = rest;
  const keep = new Map<string, number>();
  partials.forEach((p, i) => {
    if (keep.has(p.key)) return;
    const want = plan.get(p.key) as SectionWant;
    if (!want.whole) keep.set(p.key, i);
    else if (wholePeek.get(p.key) === true && !p.peek) keep.set(p.key, i);
  });
  for (let i = partials.length - 1; i >= 0; i--) {
    const p = partials[i] as (typeof partials)[number];
    if (keep.get(p.key) === i) {
      const peek = partials.every((q) => q.key !== p.key || q.peek);
      out = `${out.slice(0, p.start)}${p.name}${peek ? '.PEEK' : ''}[${p.section}]${out.slice(p.end)}`;
    } else {
      let start = p.start;
      let end = p.end;
      if (out[start - 1] === ' ') start--;
      else if (out[end] === ' ') end++;
      out = out.slice(0, start) + out.slice(end);
    }
  }
  return { rest: out, plan };
}

/**
 * For a whole section the server sent (`item` as echoed), what the commands in flight asked of
 * it: null when none asked for pieces (the item goes to the client as it is).
 */
export function wantedOf(plans: Iterable<FetchPlan>, item: string): SectionWant | null {
  const key = item.toUpperCase().replace(/^(BODY|BINARY)\.PEEK\[/, '$1[');
  let whole = false;
  const ranges: SectionWant['ranges'] = [];
  for (const plan of plans) {
    const w = plan.get(key);
    if (!w) continue;
    whole ||= w.whole;
    ranges.push(...w.ranges);
  }
  return ranges.length === 0 ? null : { whole, ranges };
}
