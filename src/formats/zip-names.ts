import { open } from 'node:fs/promises';
import { crc32 } from 'node:zlib';

/**
 * Entry names of a zip archive, read from its end: the end-of-central-directory record (EOCD), the
 * zip64 records when the archive needs them, then the central directory (APPNOTE.TXT §4.3). Local
 * headers and data are never read, so a 4 GB archive costs a few reads. Everything is bounded
 * (entries, comment, directory bytes), and garbage gives an error marker, never an exception.
 */
export interface ZipNamesOptions {
  /** Names listed at most; more → `truncated`. Default 10 000. */
  maxEntries?: number;
  /** Longest archive comment searched for the EOCD (the format's own limit is 65 535). */
  maxComment?: number;
  /** Central directory bytes read at most; more → `truncated`. Default 8 MiB. */
  maxCentralDirectory?: number;
}

export const ZIP_NAMES_DEFAULTS: Required<ZipNamesOptions> = {
  maxEntries: 10_000,
  maxComment: 65_535,
  maxCentralDirectory: 8 * 1024 * 1024,
};

export type ZipNamesError =
  /** No end-of-central-directory record: not a zip (or cut before its end). */
  | 'not-zip'
  /** A split (multi-disk) archive: the directory is not all here. */
  | 'multi-disk'
  /** The zip64 locator points at no zip64 record, or its values are out of range. */
  | 'bad-zip64'
  /** The directory is not where the EOCD says, or its first entry is broken. */
  | 'bad-central-directory'
  /** The file could not be read. */
  | 'io';

export type ZipNames =
  | {
      ok: true;
      names: string[];
      /** Entries the archive declares (may be more than `names` when truncated). */
      declaredEntries: number;
      /** Not every entry was listed (a limit, or a broken entry after good ones). */
      truncated: boolean;
      /** Some entry has the encryption flag (a password-protected archive). */
      encrypted: boolean;
      zip64: boolean;
    }
  | { ok: false; error: ZipNamesError; detail: string };

const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_CENTRAL = 0x02014b50;
const EOCD_SIZE = 22;
const LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIZE = 46;

// Code page 437, bytes 0x80-0xFF: the name encoding of zip entries without the UTF-8 flag.
const CP437_HIGH =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';

function decodeCp437(b: Buffer): string {
  let s = '';
  for (const byte of b) s += byte < 0x80 ? String.fromCharCode(byte) : (CP437_HIGH[byte - 0x80] as string);
  return s;
}

const utf8 = new TextDecoder('utf-8', { fatal: false });

/** Info-ZIP Unicode Path extra field (0x7075): a UTF-8 name, valid when its CRC matches the raw name. */
function unicodePath(extra: Buffer, rawName: Buffer): string | null {
  let p = 0;
  while (p + 4 <= extra.length) {
    const id = extra.readUInt16LE(p);
    const len = extra.readUInt16LE(p + 2);
    if (p + 4 + len > extra.length) return null;
    if (id === 0x7075 && len >= 5 && extra[p + 4] === 1) {
      if (extra.readUInt32LE(p + 5) === crc32(rawName)) return utf8.decode(extra.subarray(p + 9, p + 4 + len));
      return null;
    }
    p += 4 + len;
  }
  return null;
}

interface ReadRequest {
  offset: number;
  length: number;
}

/**
 * The parser, written once for buffers and files: it yields the byte ranges it needs and is given
 * them back (shorter when the range runs past the end).
 */
function* parse(size: number, o: Required<ZipNamesOptions>): Generator<ReadRequest, ZipNames, Buffer> {
  if (size < EOCD_SIZE) return { ok: false, error: 'not-zip', detail: `${size} bytes is too short for a zip` };
  const tailLength = Math.min(size, EOCD_SIZE + Math.min(Math.max(o.maxComment, 0), 65_535) + LOCATOR_SIZE);
  const tailStart = size - tailLength;
  const tail = yield { offset: tailStart, length: tailLength };
  // The EOCD nearest the end whose comment length reaches exactly to the end; failing that the
  // nearest one whose comment fits (some writers append bytes after the archive).
  let eocd = -1;
  let loose = -1;
  for (let p = tail.length - EOCD_SIZE; p >= 0; p--) {
    if (tail.readUInt32LE(p) !== SIG_EOCD) continue;
    const end = p + EOCD_SIZE + tail.readUInt16LE(p + 20);
    if (end === tail.length) {
      eocd = p;
      break;
    }
    if (end < tail.length && loose < 0) loose = p;
  }
  if (eocd < 0) eocd = loose;
  if (eocd < 0) return { ok: false, error: 'not-zip', detail: 'no end of central directory record' };
  const eocdOffset = tailStart + eocd;
  const disk = tail.readUInt16LE(eocd + 4);
  const cdDisk = tail.readUInt16LE(eocd + 6);
  if (disk !== 0 || cdDisk !== 0) return { ok: false, error: 'multi-disk', detail: `disk ${disk}, directory on disk ${cdDisk}` };
  let entries = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  let dirEnd = eocdOffset;
  let zip64 = false;

  const locatorAt = eocd - LOCATOR_SIZE;
  if (locatorAt >= 0 && tail.readUInt32LE(locatorAt) === SIG_ZIP64_LOCATOR) {
    const recOffset = Number(tail.readBigUInt64LE(locatorAt + 8));
    if (!Number.isSafeInteger(recOffset) || recOffset + ZIP64_EOCD_SIZE > eocdOffset - LOCATOR_SIZE) {
      return { ok: false, error: 'bad-zip64', detail: `zip64 record offset ${recOffset} is outside the file` };
    }
    // Like the central directory, the record may sit after a prefix (a self-extractor stub).
    let rec = yield { offset: recOffset, length: ZIP64_EOCD_SIZE };
    let recAt = recOffset;
    if (rec.length < ZIP64_EOCD_SIZE || rec.readUInt32LE(0) !== SIG_ZIP64_EOCD) {
      recAt = eocdOffset - LOCATOR_SIZE - ZIP64_EOCD_SIZE;
      rec = yield { offset: recAt, length: ZIP64_EOCD_SIZE };
      if (recAt < 0 || rec.length < ZIP64_EOCD_SIZE || rec.readUInt32LE(0) !== SIG_ZIP64_EOCD) {
        return { ok: false, error: 'bad-zip64', detail: 'no zip64 end of central directory record' };
      }
    }
    const e64 = Number(rec.readBigUInt64LE(32));
    const size64 = Number(rec.readBigUInt64LE(40));
    const off64 = Number(rec.readBigUInt64LE(48));
    if (![e64, size64, off64].every(Number.isSafeInteger)) {
      return { ok: false, error: 'bad-zip64', detail: 'zip64 values out of range' };
    }
    entries = e64;
    cdSize = size64;
    cdOffset = off64;
    dirEnd = recAt;
    zip64 = true;
  }
  // Saturated 32-bit fields without a locator may be genuine values or a broken zip64 archive: they
  // are tried as they are, and the signature check below tells.

  if (cdSize > dirEnd) return { ok: false, error: 'bad-central-directory', detail: `directory of ${cdSize} bytes does not fit before its end record` };
  const readLength = Math.min(cdSize, o.maxCentralDirectory);
  let truncated = readLength < cdSize;
  let cd: Buffer = Buffer.alloc(0);
  if (entries > 0) {
    const isDirectory = (b: Buffer): boolean => b.length >= CENTRAL_SIZE && b.readUInt32LE(0) === SIG_CENTRAL;
    let cdStart = cdOffset;
    if (cdStart + cdSize <= dirEnd) cd = yield { offset: cdStart, length: readLength };
    if (!isDirectory(cd) && dirEnd - cdSize !== cdOffset) {
      // The stated offset is off by a prefix (a self-extracting stub, a gateway that prepended
      // bytes): the directory still ends where the end records begin.
      cdStart = dirEnd - cdSize;
      cd = yield { offset: cdStart, length: readLength };
    }
    if (!isDirectory(cd)) {
      return { ok: false, error: 'bad-central-directory', detail: `no central directory entry at offset ${cdOffset}` };
    }
  }

  const names: string[] = [];
  let encrypted = false;
  let p = 0;
  for (let i = 0; i < entries; i++) {
    if (names.length >= o.maxEntries) {
      truncated = true;
      break;
    }
    if (p + CENTRAL_SIZE > cd.length || cd.readUInt32LE(p) !== SIG_CENTRAL) {
      truncated = true;
      break;
    }
    const flags = cd.readUInt16LE(p + 8);
    const nameLength = cd.readUInt16LE(p + 28);
    const extraLength = cd.readUInt16LE(p + 30);
    const commentLength = cd.readUInt16LE(p + 32);
    const next = p + CENTRAL_SIZE + nameLength + extraLength + commentLength;
    if (p + CENTRAL_SIZE + nameLength + extraLength > cd.length) {
      truncated = true;
      break;
    }
    const raw = cd.subarray(p + CENTRAL_SIZE, p + CENTRAL_SIZE + nameLength);
    const extra = cd.subarray(p + CENTRAL_SIZE + nameLength, p + CENTRAL_SIZE + nameLength + extraLength);
    // Bit 11: the name is UTF-8; otherwise CP437, unless an Info-ZIP Unicode Path field says more.
    const name = flags & 0x0800 ? utf8.decode(raw) : (unicodePath(extra, raw) ?? decodeCp437(raw));
    names.push(name);
    if (flags & 0x0001) encrypted = true;
    p = next;
  }
  return { ok: true, names, declaredEntries: entries, truncated, encrypted, zip64 };
}

function options(o: ZipNamesOptions): Required<ZipNamesOptions> {
  return { ...ZIP_NAMES_DEFAULTS, ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) };
}

/** Lists the entry names of a zip held in memory. */
export function zipNamesFromBuffer(data: Buffer, opts: ZipNamesOptions = {}): ZipNames {
  try {
    const gen = parse(data.length, options(opts));
    let step = gen.next();
    while (!step.done) {
      const { offset, length } = step.value;
      const start = Math.max(0, Math.min(offset, data.length));
      step = gen.next(data.subarray(start, Math.min(data.length, start + Math.max(0, length))));
    }
    return step.value;
  } catch (err) {
    // The parser checks every bound itself; this is a backstop, marked so a test can tell.
    return { ok: false, error: 'bad-central-directory', detail: `unexpected: ${(err as Error).message}` };
  }
}

/** Lists the entry names of a zip file, reading only its end and its central directory. */
export async function zipNamesFromFile(path: string, opts: ZipNamesOptions = {}): Promise<ZipNames> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    return { ok: false, error: 'io', detail: (err as NodeJS.ErrnoException).code ?? String(err) };
  }
  try {
    const { size } = await fh.stat();
    const gen = parse(size, options(opts));
    let step = gen.next();
    while (!step.done) {
      const { offset, length } = step.value;
      const start = Math.max(0, Math.min(offset, size));
      const want = Math.max(0, Math.min(length, size - start));
      const buf = Buffer.alloc(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, start + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      step = gen.next(buf.subarray(0, got));
    }
    return step.value;
  } catch (err) {
    return { ok: false, error: 'io', detail: (err as NodeJS.ErrnoException).code ?? (err as Error).message };
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** Either: a Buffer is listed in memory, a string is a file path. */
export function listZipNames(source: Buffer | string, opts: ZipNamesOptions = {}): Promise<ZipNames> {
  return typeof source === 'string' ? zipNamesFromFile(source, opts) : Promise.resolve(zipNamesFromBuffer(source, opts));
}
