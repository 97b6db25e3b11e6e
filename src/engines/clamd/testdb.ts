import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * The test signature database generated at setup. ClamAV's official databases cannot be
 * downloaded here, so avgate's project-local clamd gets a tiny database of its own:
 * - the EICAR test string, as an MD5 hash signature (.hdb) and as a body signature (.ndb) so it is
 *   also found inside other content;
 * - the MD5 of Debian's clamav-testfiles `clam.exe`, which makes ClamAV's own unpackers find it in
 *   clam.zip, clam.tar.gz, clam.pdf, clam.7z, clam.cab and the rest of that package.
 *
 * The EICAR string is never stored as such in the repository (a source file holding it would be
 * flagged by every scanner that reads the tree): it is kept reversed and base64-encoded.
 */
const EICAR_REVERSED_B64 =
  'KkgrSCQhRUxJRi1UU0VULVNVUklWSVROQS1EUkFETkFUUy1SQUNJRSR9NylDQzcpXlAoNDVYWlBcNFtQQUAlUCFPNVg=';

export function eicarBytes(): Buffer {
  return Buffer.from([...Buffer.from(EICAR_REVERSED_B64, 'base64')].reverse());
}

/** Where Debian's clamav-testfiles puts its files. */
export const CLAMAV_TESTFILES_DIR = '/usr/share/clamav-testfiles';
/** clam.exe from clamav-testfiles: MD5 and size, used when the package is not installed. */
const CLAM_EXE = { md5: 'aa15bcf478d165efd2065190eb473bcb', size: 544 };

export const TEST_SIGNATURE_NAMES = {
  eicarHash: 'Avgate.Test.EICAR.HDB',
  eicarBody: 'Avgate.Test.EICAR.NDB',
  clamExe: 'Avgate.Test.ClamExe',
} as const;

function clamExeSignature(): { md5: string; size: number } {
  const path = join(CLAMAV_TESTFILES_DIR, 'clam.exe');
  if (existsSync(path)) {
    const data = readFileSync(path);
    return { md5: createHash('md5').update(data).digest('hex'), size: data.length };
  }
  return CLAM_EXE;
}

/** Writes avgate-test.hdb and avgate-test.ndb into dir (created if missing). */
export async function writeTestDatabase(dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const eicar = eicarBytes();
  const clam = clamExeSignature();
  const hdb = [
    `${createHash('md5').update(eicar).digest('hex')}:${eicar.length}:${TEST_SIGNATURE_NAMES.eicarHash}`,
    `${clam.md5}:${clam.size}:${TEST_SIGNATURE_NAMES.clamExe}`,
  ].join('\n');
  const ndb = `${TEST_SIGNATURE_NAMES.eicarBody}:0:*:${eicar.toString('hex')}`;
  const files = [join(dir, 'avgate-test.hdb'), join(dir, 'avgate-test.ndb')];
  await writeFile(files[0] as string, `${hdb}\n`);
  await writeFile(files[1] as string, `${ndb}\n`);
  return files;
}

/** Adds one more body signature (used to prove that a database change invalidates the cache). */
export async function addBodySignature(dir: string, name: string, content: Buffer): Promise<void> {
  await writeFile(join(dir, `${name}.ndb`), `${name}:0:*:${content.toString('hex')}\n`);
}
