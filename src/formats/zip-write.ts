/**
 * The records around the one entry of a single-file ZIP archive (APPNOTE 4.3.7, 4.3.12, 4.3.16):
 * local file header, central directory entry, end of central directory. The entry's data (stored,
 * method 0) goes between the local header and the central directory; the caller writes it, so it
 * can be streamed. Readers: src/formats/zip-names.ts.
 */
export interface ZipEntry {
  name: Buffer;
  /** General-purpose flags: 0x0001 encrypted, 0x0800 UTF-8 name. */
  flags: number;
  crc: number;
  /** Bytes of data as stored (for an encrypted entry: with its 12-byte encryption header). */
  compressedSize: number;
  size: number;
  /** MS-DOS time and date of the entry. */
  time?: number;
  date?: number;
  /** Unix mode for the central directory's external attributes (e.g. 0o100600), or 0. */
  unixMode?: number;
}

/** Local file header followed by the name. */
export function zipLocalHeader(e: ZipEntry): Buffer {
  const local = Buffer.alloc(30);
  local.writeUInt32LE(0x04034b50, 0);
  local.writeUInt16LE(20, 4); // version needed: 2.0
  local.writeUInt16LE(e.flags, 6);
  local.writeUInt16LE(0, 8); // stored
  local.writeUInt16LE(e.time ?? 0, 10);
  local.writeUInt16LE(e.date ?? 0, 12);
  local.writeUInt32LE(e.crc, 14);
  local.writeUInt32LE(e.compressedSize, 18);
  local.writeUInt32LE(e.size, 22);
  local.writeUInt16LE(e.name.length, 26);
  return Buffer.concat([local, e.name]);
}

/** Central directory (one entry, its local header at offset 0) and the end record. */
export function zipCentralAndEnd(e: ZipEntry): Buffer {
  const central = Buffer.alloc(46);
  central.writeUInt32LE(0x02014b50, 0);
  central.writeUInt16LE(e.unixMode ? (3 << 8) | 20 : 20, 4); // made by: Unix when a mode is given, 2.0
  central.writeUInt16LE(20, 6);
  central.writeUInt16LE(e.flags, 8);
  central.writeUInt16LE(0, 10);
  central.writeUInt16LE(e.time ?? 0, 12);
  central.writeUInt16LE(e.date ?? 0, 14);
  central.writeUInt32LE(e.crc, 16);
  central.writeUInt32LE(e.compressedSize, 20);
  central.writeUInt32LE(e.size, 24);
  central.writeUInt16LE(e.name.length, 28);
  central.writeUInt32LE(((e.unixMode ?? 0) << 16) >>> 0, 38);
  central.writeUInt32LE(0, 42);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(1, 8);
  end.writeUInt16LE(1, 10);
  end.writeUInt32LE(46 + e.name.length, 12);
  end.writeUInt32LE(30 + e.name.length + e.compressedSize, 16);
  return Buffer.concat([central, e.name, end]);
}
