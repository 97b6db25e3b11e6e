import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SKIP_REASONS, walk, type WalkEntry, type WalkOptions } from '../../src/scan/walk.js';

let base: string;
let tree: string;
let outside: string;

async function collect(root: string, options: WalkOptions = {}): Promise<WalkEntry[]> {
  const out: WalkEntry[] = [];
  for await (const e of walk(root, options)) out.push(e);
  return out;
}

/** Paths relative to the tree, sorted, with the entry kind: `file a/b.txt`. */
function summary(entries: WalkEntry[], root = tree): string[] {
  return entries
    .map((e) => `${e.kind} ${e.path.startsWith(`${root}/`) ? e.path.slice(root.length + 1) : e.path}`)
    .sort();
}

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'avgate-walk-'));
  tree = join(base, 'tree');
  outside = join(base, 'outside');
  await mkdir(join(tree, 'a', 'b', 'c'), { recursive: true });
  await mkdir(join(tree, 'node_modules', 'x'), { recursive: true });
  await mkdir(join(tree, '.hidden'), { recursive: true });
  await mkdir(outside, { recursive: true });
  for (const f of ['top.txt', 'top.log', 'a/one.txt', 'a/b/two.txt', 'a/b/c/three.txt', 'a/b/c/deep.log', 'node_modules/x/mod.js', '.hidden/h.tmp']) {
    await writeFile(join(tree, f), f);
  }
  await writeFile(join(outside, 'secret.txt'), 'outside');
});

after(async () => {
  await rm(base, { recursive: true, force: true });
});

describe('walk', () => {
  it('recurses into every directory and yields regular files only', async () => {
    assert.deepEqual(summary(await collect(tree)), [
      'file .hidden/h.tmp',
      'file a/b/c/deep.log',
      'file a/b/c/three.txt',
      'file a/b/two.txt',
      'file a/one.txt',
      'file node_modules/x/mod.js',
      'file top.log',
      'file top.txt',
    ]);
  });

  it('yields a named file as is, and a nonexistent path as an error', async () => {
    assert.deepEqual(await collect(join(tree, 'top.txt')), [{ kind: 'file', path: join(tree, 'top.txt') }]);
    const missing = await collect(join(tree, 'nope'));
    assert.equal(missing.length, 1);
    assert.equal(missing[0]?.kind, 'error');
    assert.match((missing[0] as { cause: string }).cause, /ENOENT/);
  });

  it('counts depth from the named directory: its entries are depth 1', async () => {
    assert.deepEqual(await collect(tree, { maxDepth: 0 }), []);
    assert.deepEqual(summary(await collect(tree, { maxDepth: 1 })), ['file top.log', 'file top.txt']);
    assert.deepEqual(summary(await collect(tree, { maxDepth: 3 })), [
      'file .hidden/h.tmp',
      'file a/b/two.txt',
      'file a/one.txt',
      'file node_modules/x/mod.js',
      'file top.log',
      'file top.txt',
    ]);
    // A named file is depth 0 and always yielded.
    assert.equal((await collect(join(tree, 'top.txt'), { maxDepth: 0 })).length, 1);
  });

  it('excludes by base name and by relative path, pruning matching directories', async () => {
    const got = summary(await collect(tree, { exclude: ['*.log', 'node_modules', 'a/b/c/three.txt', '*.tmp'] }));
    assert.deepEqual(got, ['file a/b/two.txt', 'file a/one.txt', 'file top.txt']);
    const byPath = summary(await collect(tree, { exclude: ['a/**'] }));
    assert.ok(!byPath.some((p) => p.includes(' a/')), byPath.join());
    // An absolute pattern (as admins write clamscan's --exclude-dir) is matched against the absolute path.
    const abs = summary(await collect(tree, { exclude: [join(tree, 'a', 'b'), `${tree}/*.log`] }));
    assert.ok(!abs.some((p) => p.includes(' a/b/') || p.endsWith('.log')), abs.join());
    assert.ok(abs.includes('file a/one.txt'), abs.join());
  });

  describe('symbolic links', () => {
    let linkTree: string;
    before(async () => {
      linkTree = join(base, 'links');
      await mkdir(join(linkTree, 'sub'), { recursive: true });
      await writeFile(join(linkTree, 'sub', 'real.txt'), 'real');
      await symlink(outside, join(linkTree, 'to-outside-dir'));
      await symlink(join(outside, 'secret.txt'), join(linkTree, 'to-outside-file'));
      // A loop: sub/up points back to the tree's root.
      await symlink('..', join(linkTree, 'sub', 'up'));
      await symlink(join(linkTree, 'missing'), join(linkTree, 'dangling'));
    });

    it('does not follow links by default and reports them as skipped', async () => {
      const entries = await collect(linkTree);
      assert.deepEqual(summary(entries, linkTree), [
        'file sub/real.txt',
        'skipped dangling',
        'skipped sub/up',
        'skipped to-outside-dir',
        'skipped to-outside-file',
      ]);
      assert.ok(entries.filter((e) => e.kind === 'skipped').every((e) => (e as { reason: string }).reason === SKIP_REASONS.symlink));
      assert.ok(!entries.some((e) => e.path.includes('secret.txt')));
    });

    it('terminates on a loop with followSymlinks, reading each directory once', async () => {
      const entries = await collect(linkTree, { followSymlinks: true });
      assert.deepEqual(summary(entries, linkTree), [
        'file sub/real.txt',
        'file to-outside-dir/secret.txt',
        'file to-outside-file',
        'skipped dangling',
        'skipped sub/up',
      ]);
      const up = entries.find((e) => e.path.endsWith('sub/up'));
      assert.deepEqual(up, { kind: 'skipped', path: join(linkTree, 'sub', 'up'), reason: SKIP_REASONS.loop });
    });

    it('resolves a symbolic link named as the root', async () => {
      const link = join(base, 'root-link');
      await symlink(tree, link);
      assert.equal((await collect(link, { maxDepth: 1 })).length, 2);
    });
  });

  it('skips FIFOs instead of blocking on them', async () => {
    const dir = join(base, 'fifo');
    await mkdir(dir);
    execFileSync('mkfifo', [join(dir, 'pipe')]);
    assert.deepEqual(await collect(dir), [{ kind: 'skipped', path: join(dir, 'pipe'), reason: SKIP_REASONS.special }]);
  });

  it('never enters a directory listed in skipDirectories', async () => {
    const { stat } = await import('node:fs/promises');
    const { dirId } = await import('../../src/scan/walk.js');
    const skip = new Set([dirId(await stat(join(tree, 'a')))]);
    assert.ok(!summary(await collect(tree, { skipDirectories: skip })).some((p) => p.includes(' a/')));
  });

  it('stops reading when the consumer stops early', async () => {
    const it = walk(tree);
    const first = await it.next();
    assert.equal(first.done, false);
    await it.return(undefined);
    assert.equal((await it.next()).done, true);
  });
});
