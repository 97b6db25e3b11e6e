import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { access, constants, lstat, mkdir, mkdtemp, open, readdir, readFile, rm, stat, statfs, writeFile, type FileHandle } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AvgateError, messageOf } from '../../core/errors.js';
import { onReopenLogs, type Logger } from '../../core/logging.js';
import { freeLoopbackPort } from '../../core/net.js';
import { parseSize } from '../../core/units.js';
import { clamdRequest } from './connection.js';
import { databaseFingerprint } from './fingerprint.js';
import type { ClamdAddress } from './protocol.js';
import { writeTestDatabase } from './testdb.js';

export interface LocalClamdOptions {
  /** Where clamd.conf, the socket, the log and (for `database: test`) the database live. */
  stateDir: string;
  /** `test` generates the test database; `system` uses ClamAV's standard directory; or a path. */
  database: 'test' | 'system' | string;
  /** Loopback TCP port; 0 picks a free one; null = no TCP socket (the unix socket only). */
  tcpPort: number | null;
  tcpAddr?: string;
  /** clamd's StreamMaxLength (e.g. "100M"): INSTREAM objects above it are refused (skipped). */
  streamMaxLength?: string;
  maxThreads?: number;
  /** How long clamd may take to load its databases and answer PING (ms). */
  startTimeoutMs?: number;
  clamdPath?: string;
  /** More clamd.conf lines, key → value. */
  extra?: Record<string, string>;
  /**
   * clamd's TemporaryDirectory (INSTREAM objects, unpacked archive members): `auto` (the default)
   * = a private directory in /dev/shm when that is a tmpfs with TMPFS_MIN_FREE free, else `state`;
   * `state` = `<stateDir>/tmp`; or a directory (created, never emptied by avgate).
   */
  tempDir?: string;
  /** clamd's AlertExceedsMax (default true): content past clamd's unpacking limits is a finding, not clean. */
  alertExceedsMax?: boolean;
  /** Where warnings about the temp-dir go (else standard error). */
  log?: Logger;
}

/** Free space /dev/shm must have for `temp-dir: auto` to use it. */
export const TMPFS_MIN_FREE = 1024 * 1024 * 1024;
const TMPFS_MAGIC = 0x01021994;

/**
 * Where clamd's temporary files go for `temp-dir` (see LocalClamdOptions.tempDir): the directory,
 * and whether it is avgate's own in /dev/shm (emptied at start, removed at stop). The name of a
 * private one is predictable: privateTempDir() makes it, or another when someone else holds it.
 */
export async function clamdTempDir(setting: string, stateDir: string): Promise<{ path: string; private: boolean }> {
  const onState = { path: join(stateDir, 'tmp'), private: false };
  if (setting === 'state') return onState;
  if (setting !== 'auto') return { path: resolve(stateDir, setting), private: false };
  try {
    const fs = await statfs('/dev/shm');
    if (fs.type !== TMPFS_MAGIC || fs.bavail * fs.bsize < TMPFS_MIN_FREE) return onState;
    await access('/dev/shm', constants.W_OK);
  } catch {
    return onState;
  }
  // One directory per user and state directory: two avgates on one host never share it.
  const tag = createHash('sha256').update(resolve(stateDir)).digest('hex').slice(0, 12);
  return { path: join('/dev/shm', `avgate-clamd-${process.getuid?.() ?? 0}-${tag}`), private: true };
}

/** A directory of this user alone: not a symlink, our uid, no group or other access. */
async function ownDirectory(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => null);
  return st !== null && st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o077) === 0;
}

/**
 * Makes the private temp-dir `path` (clamdTempDir) and returns the directory to use. Any local user
 * may create its predictable name in /dev/shm first: a name that is not a directory of ours alone
 * (another owner, group or other access, a symlink) is left alone and a directory with an
 * unpredictable name beside it used instead (`previous`, the one an earlier start made, while it is
 * still ours), so a squatter neither stops clamd from starting nor owns its files. No rm and mkdir
 * again: between the two another user could take the name. Once checked, a directory of ours stays
 * ours (the sticky bit of /dev/shm: nobody else may rename or remove it). `empty`: its contents are
 * removed (what a killed clamd left there would hold memory until reboot).
 */
export async function privateTempDir(path: string, options: { empty: boolean; previous?: string | null; warn: (message: string) => void }): Promise<string> {
  let dir = path;
  try {
    await mkdir(path, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    if (!(await ownDirectory(path))) {
      if (options.previous && options.previous !== path && (await ownDirectory(options.previous))) dir = options.previous;
      else {
        dir = await mkdtemp(`${path}-`);
        options.warn(`${path} exists and is not a directory of this user alone (owner, mode or a symlink): clamd's temporary directory is ${dir} instead`);
      }
    }
  }
  if (options.empty) for (const name of await readdir(dir)) await rm(join(dir, name), { recursive: true, force: true });
  return dir;
}

/** ClamAV's standard database directory on Debian (freshclam writes there). */
export const SYSTEM_DATABASE_DIR = '/var/lib/clamav';

/**
 * The project-local clamd: generates (or points at) a database, writes clamd.conf under the state
 * directory, starts clamd in the foreground as a child, waits until PING answers PONG, and stops
 * it with SIGTERM (SIGKILL after a grace period).
 */
const RELOAD_OK = /Database correctly reloaded/;
/** clamd's lines of one reload, in order: it starts reading, loads, then swaps engines. */
const RELOAD_START = /Reading databases from /;
const RELOAD_ACTIVE = /Activating the newly loaded database/;
/** RELOADs sent again when clamd dropped ours (a reload was running). */
const RELOAD_RESENDS = 5;
/** The reload of each clamd (by state directory) under way in this process. */
const reloadsRunning = new Map<string, Promise<void>>();
/** clamd's lines for a RELOAD it could not do (it keeps the previous database). */
const RELOAD_REFUSED = /(?:reload_th|reload_db): [^\n]*|Database reload (?:setup )?failed[^\n]*/g;

/** clamd could not load the signature files on RELOAD and scans on with the previous ones. */
export class ReloadRefused extends AvgateError {
  constructor(message: string) {
    super('AVG_ERR_SIGNATURES', message);
  }
}

/** clamd's defaults for the largest file and the data scanned per object. */
const CLAMD_MAX_FILE = 100 * 1024 * 1024;
const CLAMD_MAX_SCAN = 400 * 1024 * 1024;

/** MaxFileSize and MaxScanSize raised to StreamMaxLength where it is above clamd's defaults. */
export function fileLimits(streamMaxLength: string): Record<string, string> {
  const bytes = parseSize(streamMaxLength);
  if (bytes === null) return {};
  return {
    ...(bytes > CLAMD_MAX_FILE ? { MaxFileSize: String(bytes) } : {}),
    ...(bytes > CLAMD_MAX_SCAN ? { MaxScanSize: String(bytes) } : {}),
  };
}

/** Waits before restarting a clamd that ended on its own (supervise): first, longest, and the run that resets it. */
const RESTART_FIRST_MS = 1000;
const RESTART_MAX_MS = 60_000;
const RESTART_STEADY_MS = 60_000;

export class LocalClamd {
  readonly stateDir: string;
  readonly socketPath: string;
  readonly confPath: string;
  readonly logPath: string;
  dbDir: string;
  tcpPort: number | null;
  private child: ChildProcess | null = null;
  private unregisterReopen: (() => void) | null = null;
  /** This run's registration as a user of a shared clamd (join/leave). */
  private userFile: string | null = null;

  /** serve starts this clamd: what command-line runs left registered is about an earlier one. */
  ownedByServe(): void {
    this.owner = 'serve';
  }

  private owner: 'serve' | 'command' = 'command';
  private exited: Promise<void> | null = null;
  private temp: { path: string; private: boolean } | null = null;
  /** How the last clamd process ended, for the log. */
  private lastExit: string | null = null;
  private stopping = false;
  private supervising = false;
  /** A restart under way (stop() waits for it, so no clamd is left behind). */
  private restarting: Promise<void> | null = null;
  private restartWait = new AbortController();

  constructor(private readonly options: LocalClamdOptions) {
    this.stateDir = resolve(options.stateDir);
    this.socketPath = join(this.stateDir, 'clamd.sock');
    this.confPath = join(this.stateDir, 'clamd.conf');
    this.logPath = join(this.stateDir, 'clamd.log');
    this.tcpPort = options.tcpPort;
    this.dbDir =
      options.database === 'test'
        ? join(this.stateDir, 'db')
        : options.database === 'system'
          ? SYSTEM_DATABASE_DIR
          : resolve(options.database);
  }

  get unixAddress(): ClamdAddress {
    return { kind: 'unix', path: this.socketPath };
  }

  /** Throws when clamd has no TCP socket (tcp-port null). */
  get tcpAddress(): ClamdAddress {
    if (this.tcpPort === null) throw new AvgateError('AVG_ERR_CONFIG', 'the project-local clamd has no TCP socket (clamd.tcp-port is null)');
    return { kind: 'tcp', host: this.options.tcpAddr ?? '127.0.0.1', port: this.tcpPort };
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** clamd's TemporaryDirectory, once setup() has chosen it. */
  get tempDir(): string | null {
    return this.temp?.path ?? null;
  }

  /** Writes the database (for `test`) and clamd.conf. */
  async setup(): Promise<void> {
    await mkdir(this.stateDir, { recursive: true });
    if (this.options.database === 'test') await writeTestDatabase(this.dbDir);
    else if (!existsSync(this.dbDir)) {
      throw new AvgateError('AVG_ERR_CLAMD_START', `clamd database directory ${this.dbDir} does not exist`);
    }
    if (this.tcpPort === 0) this.tcpPort = await freeLoopbackPort();
    // INSTREAM objects are written to a file by clamd before it scans them: on a tmpfs that costs
    // no disk journal (measured here, 5 KB objects: 0.28 ms of clamd CPU each instead of 0.38-0.49).
    const chosen = await clamdTempDir(this.options.tempDir ?? 'auto', this.stateDir);
    // A private one taken by someone else is replaced by another: the one of an earlier start, if any.
    const previous = this.temp?.private ? this.temp.path : null;
    this.temp = chosen;
    await this.makeTemp(false, previous);
    const lines: Record<string, string> = {
      Foreground: 'yes',
      DatabaseDirectory: this.dbDir,
      LocalSocket: this.socketPath,
      LocalSocketMode: '660',
      // Without TCPSocket clamd listens on its unix socket only (mode 660: nobody else can send it
      // SHUTDOWN or RELOAD, which any local user could over TCP).
      ...(this.tcpPort === null ? {} : { TCPSocket: String(this.tcpPort), TCPAddr: this.options.tcpAddr ?? '127.0.0.1' }),
      LogFile: this.logPath,
      LogTime: 'yes',
      PidFile: join(this.stateDir, 'clamd.pid'),
      TemporaryDirectory: this.temp.path,
      StreamMaxLength: this.options.streamMaxLength ?? '100M',
      // What is let in is scanned whole: clamd's own MaxFileSize (100M) and MaxScanSize (400M) would
      // otherwise turn a clean object above them into Heuristics.Limits.Exceeded (AlertExceedsMax).
      ...fileLimits(this.options.streamMaxLength ?? '100M'),
      MaxThreads: String(this.options.maxThreads ?? 16),
      AlertExceedsMax: this.options.alertExceedsMax === false ? 'no' : 'yes',
      // A session idle for this long is closed by clamd; avgate's pool closes its own earlier.
      IdleTimeout: '60',
      // No periodic check of its own: changed files are loaded when avgate sends RELOAD (the
      // signature updater, or the engine's version check, engines/clamd/net.ts), so that avgate
      // knows which files clamd scans with before it caches verdicts under them.
      SelfCheck: '0',
      ...this.options.extra,
    };
    // As root, clamd would switch to the clamav user, which may not read the state directory.
    if (process.getuid?.() === 0) lines.User = userInfo().username;
    const text = Object.entries(lines)
      .map(([k, v]) => `${k} ${v}`)
      .join('\n');
    await writeFile(this.confPath, `# written by avgate; changes are overwritten at the next start\n${text}\n`);
  }

  /**
   * Starts clamd and waits until it answers PING. `signal` (a stop during avgate's start-up)
   * ends the wait: clamd is stopped again and AVG_ERR_STOPPED thrown.
   */
  async start(signal?: AbortSignal): Promise<void> {
    this.stopping = false;
    if (this.restartWait.signal.aborted) this.restartWait = new AbortController();
    const before = this.temp?.private ? this.temp.path : null;
    await this.setup();
    await rm(this.socketPath, { force: true });
    await this.stopLeftover();
    // Emptied here, not in setup(): `avgate clamd setup` beside a running clamd must not touch
    // its files. Ours alone: what a killed clamd left there would hold memory until reboot.
    if (this.temp?.private) {
      await this.makeTemp(true, this.temp.path);
      // One an earlier start had to use instead (privateTempDir) and needs no more: ours, so removed.
      if (before !== null && before !== this.temp.path) await rm(before, { recursive: true, force: true });
    }
    if (signal?.aborted) throw new AvgateError('AVG_ERR_STOPPED', 'stopped before the project-local clamd was started');
    // Taken before clamd reads the files: if they change while it loads, the record is older than
    // what it holds, and the engines' next look has it RELOAD (never the other way round).
    const loading = await this.fingerprintNow();
    await rm(this.loadedFile, { force: true });
    // A hand-over mark of a command-line run is about a clamd that is gone: this one is not theirs
    // to stop (a scan starting it marks it again if need be, serve's never is).
    await rm(join(this.stateDir, 'cli-started'), { force: true });
    if (this.owner === 'serve') await rm(join(this.stateDir, 'users'), { recursive: true, force: true });
    // Its own process group: a terminal's Ctrl-C reaches avgate, which then stops clamd in order
    // (and reaps it), instead of both racing to exit.
    const child = spawn(this.options.clamdPath ?? 'clamd', ['-c', this.confPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true,
    });
    this.child = child;
    // logrotate moving clamd.log away: clamd reopens its log file on SIGHUP (avgate's SIGHUP and
    // `avgate reload` pass it on), so the RELOAD confirmation (reload()) reads the file clamd writes.
    this.unregisterReopen ??= onReopenLogs(() => this.reopenLog());
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    let exitInfo: string | null = null;
    this.exited = new Promise((res) => {
      child.once('exit', (code, sig) => {
        exitInfo = `exit code ${code ?? '-'} signal ${sig ?? '-'}`;
        this.lastExit = exitInfo;
        res();
      });
      child.once('error', (err) => {
        exitInfo = messageOf(err);
        this.lastExit = exitInfo;
        res();
      });
    });
    const deadline = Date.now() + (this.options.startTimeoutMs ?? 120_000);
    while (Date.now() < deadline) {
      if (signal?.aborted) {
        // Its own process group: left alone it would outlive avgate (and hold the socket and port).
        await this.stop();
        throw new AvgateError('AVG_ERR_STOPPED', 'stopped while the project-local clamd was starting');
      }
      if (exitInfo !== null) {
        throw new AvgateError(
          'AVG_ERR_CLAMD_START',
          `clamd ended during start-up (${exitInfo}): ${stderr.trim().split('\n').slice(-3).join(' | ') || (await this.logTail())}`,
        );
      }
      if (await this.ping()) {
        await this.recordLoaded(loading);
        return;
      }
      await sleep(50);
    }
    await this.stop();
    throw new AvgateError('AVG_ERR_CLAMD_START', `clamd did not answer PING within the start timeout; log: ${await this.logTail()}`);
  }

  /**
   * Command-line runs (`avgate scan`) share the clamd one of them started: each one registers
   * (`users/<pid>-<tag>`) while it scans, and the last one to leave stops it, whoever started it. One
   * that leaves while others still scan hands the stop over (`cli-started`). A clamd found
   * running without that mark (serve's) is never stopped by them.
   */
  async join(): Promise<void> {
    await mkdir(join(this.stateDir, 'users'), { recursive: true });
    this.userFile = join(this.stateDir, 'users', `${process.pid}-${randomBytes(4).toString('hex')}`);
    await writeFile(this.userFile, '');
  }

  /** Leaves (see join); stops clamd when this was the last user of a clamd a command line started. True when it stopped it. */
  async leave(startedHere: boolean): Promise<boolean> {
    const users = join(this.stateDir, 'users');
    const mark = join(this.stateDir, 'cli-started');
    if (this.userFile !== null) await rm(this.userFile, { force: true });
    this.userFile = null;
    let others = 0;
    for (const name of await readdir(users).catch(() => [] as string[])) {
      const pid = Number(name.split('-')[0]);
      if (!Number.isInteger(pid) || pid <= 1) continue;
      try {
        process.kill(pid, 0);
        others++;
      } catch {
        await rm(join(users, name), { force: true }); // a run that was killed
      }
    }
    if (others > 0) {
      if (startedHere) await writeFile(mark, `${process.pid}\n`);
      return false;
    }
    if (!startedHere && !existsSync(mark)) return false;
    await rm(mark, { force: true });
    if (startedHere) await this.stop();
    else await this.stopLeftover();
    return true;
  }

  /**
   * A clamd left running from this state directory by an avgate that was killed (kill -9) would
   * hold the socket and port: stop it, but only if its command line names our clamd.conf.
   */
  private async stopLeftover(): Promise<void> {
    let pid: number;
    try {
      pid = Number((await readFile(join(this.stateDir, 'clamd.pid'), 'utf8')).trim());
    } catch {
      return;
    }
    if (!Number.isInteger(pid) || pid <= 1) return;
    let cmdline: string;
    try {
      cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replace(/\0/g, ' ');
    } catch {
      return; // not running
    }
    if (!cmdline.includes(this.confPath)) return;
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 200; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await sleep(50);
    }
    process.kill(pid, 'SIGKILL');
  }

  async ping(): Promise<boolean> {
    try {
      return (await clamdRequest(this.unixAddress, 'PING', { timeoutMs: 1000 })).trim() === 'PONG';
    } catch {
      return false;
    }
  }

  /**
   * The fingerprint of the database files clamd last loaded, as the process that started or
   * reloaded it recorded (`loaded-fingerprint` in clamd's state directory, shared by serve, its
   * reloaded configurations and the commands); null when unknown. The engines cache verdicts
   * under a fingerprint only when it is this one.
   */
  async loadedFingerprint(): Promise<string | null> {
    const text = await readFile(this.loadedFile, 'utf8').catch(() => '');
    return /^[0-9a-f]{16}$/.test(text.trim()) ? text.trim() : null;
  }

  private get loadedFile(): string {
    return join(this.stateDir, 'loaded-fingerprint');
  }

  /** The database directory's fingerprint now, the updater's marker ignored (it calls reload() with its files in place). */
  private fingerprintNow(): Promise<string | null> {
    return databaseFingerprint(this.dbDir, { ignoreMarker: true }).catch(() => null);
  }

  private async recordLoaded(fp: string | null): Promise<void> {
    if (fp === null) await rm(this.loadedFile, { force: true });
    else await writeFile(this.loadedFile, `${fp}\n`);
  }

  /** SIGHUP: clamd reopens its log file by its path (nothing else); a no-op when clamd is not running. */
  reopenLog(): void {
    const c = this.child;
    if (c?.pid === undefined || c.exitCode !== null || c.signalCode !== null) return;
    process.kill(c.pid, 'SIGHUP');
  }

  /**
   * RELOAD and wait until clamd logs that it read the database anew and put it in use. Throws
   * ReloadRefused when clamd logs that it could not load it (it then keeps scanning with the
   * previous one). A RELOAD clamd gets while a reload is running is dropped without a word: when
   * a reload finishes that did not start after ours, ours is sent again. One at a time per clamd
   * in this process (the updater and the engines' version checks may ask at once).
   */
  reload(timeoutMs = 60_000): Promise<void> {
    const prior = reloadsRunning.get(this.stateDir) ?? Promise.resolve();
    const mine = prior.catch(() => undefined).then(() => this.reloadNow(timeoutMs));
    const tail = mine.catch(() => undefined);
    reloadsRunning.set(this.stateDir, tail);
    void tail.then(() => {
      if (reloadsRunning.get(this.stateDir) === tail) reloadsRunning.delete(this.stateDir);
    });
    return mine;
  }

  private async reloadNow(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const loading = await this.fingerprintNow();
    // Only what clamd writes from now on is read (the log grows for as long as clamd runs).
    let from = (await stat(this.logPath).catch(() => null))?.size ?? 0;
    await clamdRequest(this.unixAddress, 'RELOAD', { timeoutMs: 5000 });
    let resent = 0;
    while (Date.now() < deadline) {
      const added = await this.readLogFrom(from);
      const start = added.search(RELOAD_START);
      if (start >= 0) {
        const ours = added.slice(start);
        const why = ours.match(RELOAD_REFUSED);
        if (why) throw new ReloadRefused(`clamd refused the signature files: ${why.join(' / ')}`);
        if (RELOAD_ACTIVE.test(ours)) {
          await this.recordLoaded(loading);
          return;
        }
      } else if ((RELOAD_ACTIVE.test(added) || RELOAD_OK.test(added)) && resent < RELOAD_RESENDS) {
        // The end of a reload that was already running when ours came: ours was dropped.
        resent++;
        from = (await stat(this.logPath).catch(() => null))?.size ?? 0;
        await clamdRequest(this.unixAddress, 'RELOAD', { timeoutMs: 5000 });
      }
      await sleep(50);
    }
    throw new AvgateError('AVG_ERR_CLAMD_START', 'clamd did not finish RELOAD in time');
  }

  /**
   * Restarts clamd whenever it exits on its own (a crash, the OOM killer): after 1 s, then twice
   * as long after each restart that did not last a minute, up to a minute. Until it is back, scans
   * end in engine errors and the front ends fail closed. stop() ends the watch.
   */
  supervise(log: Logger): void {
    if (this.supervising) return;
    this.supervising = true;
    void (async () => {
      try {
        await this.superviseLoop(log);
      } finally {
        this.supervising = false;
      }
    })();
  }

  private async superviseLoop(log: Logger): Promise<void> {
    let delay = RESTART_FIRST_MS;
    let upSince = Date.now();
    while (!this.stopping) {
      await this.exited;
      if (this.stopping) return;
      if (Date.now() - upSince >= RESTART_STEADY_MS) delay = RESTART_FIRST_MS;
      log.error({ exit: this.lastExit, log: await this.logTail(), restartInMs: delay }, 'clamd ended on its own: scans fail closed until it is restarted');
      // The wait ends early when stop() is called: a stopping avgate is not held up by it.
      await sleep(delay, undefined, { signal: this.restartWait.signal }).catch(() => undefined);
      if (this.stopping) return;
      this.restarting = this.start();
      try {
        await this.restarting;
        log.warn({ pid: this.pid }, 'clamd restarted and answers PING');
      } catch (err) {
        log.error({ err: messageOf(err) }, 'clamd restart failed; trying again');
      } finally {
        this.restarting = null;
      }
      upSince = Date.now();
      delay = Math.min(delay * 2, RESTART_MAX_MS);
    }
  }

  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    this.unregisterReopen?.();
    this.unregisterReopen = null;
    this.restartWait.abort();
    await this.restarting?.catch(() => undefined);
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return this.removeTemp();
    child.kill('SIGTERM');
    const grace = new AbortController();
    const killed = await Promise.race([
      this.exited?.then(() => true),
      sleep(graceMs, false, { signal: grace.signal }).catch(() => false),
    ]);
    grace.abort(); // do not keep the process alive for the rest of the grace period
    if (!killed) {
      child.kill('SIGKILL');
      await this.exited;
    }
    this.child = null;
    await this.removeTemp();
  }

  /** Makes the temp-dir; a private one (privateTempDir) may end up elsewhere, which this.temp then names. */
  private async makeTemp(empty: boolean, previous: string | null): Promise<void> {
    const temp = this.temp as { path: string; private: boolean };
    const dir = temp.path;
    try {
      if (!temp.private) await mkdir(dir, { recursive: true, mode: 0o700 });
      else temp.path = await privateTempDir(dir, { empty, previous, warn: (message) => this.warn(message) });
    } catch (err) {
      throw new AvgateError('AVG_ERR_CLAMD_START', `cannot create clamd's temporary directory ${dir} (clamd.temp-dir): ${messageOf(err)}`);
    }
  }

  private warn(message: string): void {
    if (this.options.log) this.options.log.warn({ component: 'clamd' }, message);
    else process.stderr.write(`avgate: clamd: ${message}\n`);
  }

  private async removeTemp(): Promise<void> {
    if (this.temp?.private) await rm(this.temp.path, { recursive: true, force: true }).catch(() => undefined);
  }

  /** What clamd's log holds past `offset` (all of it when the file is shorter: it was rotated); '' when there is none. */
  private async readLogFrom(offset: number): Promise<string> {
    let fh: FileHandle | null = null;
    try {
      fh = await open(this.logPath, 'r');
      const size = (await fh.stat()).size;
      const start = size < offset ? 0 : offset;
      const buf = Buffer.alloc(Math.min(size - start, 1 << 20));
      const { bytesRead } = await fh.read(buf, 0, buf.length, start);
      return buf.toString('utf8', 0, bytesRead);
    } catch {
      return '';
    } finally {
      await fh?.close();
    }
  }

  private async logTail(): Promise<string> {
    try {
      return (await readFile(this.logPath, 'utf8')).trim().split('\n').slice(-3).join(' | ');
    } catch {
      return '(no log)';
    }
  }
}
