import { z } from 'zod';
import { DEFAULT_MIME_LIMITS } from '../mime/limits.js';
import { positiveInt, size } from './units-schema.js';
import { MIME_GLOB } from '../policy/mail/filter.js';
import { MAIL_ACTIONS, MAIL_STATUSES, NAME_STATUSES, type MailAction, type MailStatus } from '../policy/mail/status.js';

/**
 * The `mail` section: groups of senders/recipients with per-status actions, notifications and
 * attachment filters (see docs/mail-policy.md). The default group is written out in full here, so
 * `config show` and the example config list every default; other groups name only what they change
 * and inherit the rest from the default group.
 */

const status = z.enum(MAIL_STATUSES);
const action = z.enum(MAIL_ACTIONS);

/** A JavaScript regular expression (case-insensitive when used). */
const regex = z.string().superRefine((s, ctx) => {
  try {
    new RegExp(s, 'i');
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `invalid regular expression: ${(err as Error).message}` });
  }
});

/** A bare mail address: no display name, no angle brackets, nothing that could break a header. */
const address = z.string().regex(/^[^\s<>@,;"()\\[\]]+@[^\s<>@,;"()\\[\]]+$/, 'expected a mail address like postmaster@example.com');

const mimeGlob = z.string().regex(MIME_GLOB, 'expected a MIME type like application/x-msdownload or */x-executable');

/** An object with one optional key per status: a group lists only the statuses it changes. */
function perStatus<T extends z.ZodType>(value: T) {
  const shape = {} as Record<MailStatus, z.ZodOptional<T>>;
  for (const s of MAIL_STATUSES) shape[s] = value.optional();
  return z.strictObject(shape);
}

const DEFAULT_ACTIONS: Readonly<Record<MailStatus, MailAction>> = {
  clean: 'unchanged',
  infected: 'remove',
  suspicious: 'remove',
  filtered: 'remove',
  protected: 'remove',
  corrupted: 'remove',
  error: 'tempfail',
  unknown: 'remove',
  skipped: 'remove',
};

const actionsWithDefaults = (() => {
  const shape = {} as Record<MailStatus, z.ZodDefault<typeof action>>;
  for (const s of MAIL_STATUSES) shape[s] = action.default(DEFAULT_ACTIONS[s]);
  return z.strictObject(shape);
})();

const oneLine = z.string().regex(/^[^\r\n]*$/, 'one line');

const templatePath = z.string().min(1).nullable();

const templatesSchema = z.strictObject({
  sender: templatePath.default(null),
  recipients: templatePath.default(null),
  admin: templatePath.default(null),
  removed: templatePath.default(null),
});

const ADMIN_ATTACHMENT = z.enum(['none', 'report', 'original']);

/** The default group: every setting with its default. */
const defaultGroupSchema = z.strictObject({
  /** Admin addresses of the group (notify-admin). */
  admin: z.array(address).default([]),
  actions: actionsWithDefaults.prefault({}),
  /** File substituted for a document whose status has action replace. */
  'replace-with': perStatus(z.string().min(1)).default({}),
  quarantine: z.array(status).default(['infected', 'suspicious', 'filtered', 'protected', 'corrupted', 'unknown', 'skipped']),
  /** Addresses that get a copy (BCC) of the original message, per status. */
  'copy-to': perStatus(z.array(address)).default({}),
  /** Per status, merged key by key with these defaults ('' = no prefix). */
  'prefix-subject': perStatus(oneLine)
    .extend({ infected: oneLine.default('[VIRUS REMOVED]'), suspicious: oneLine.default('[SUSPICIOUS]') })
    .prefault({}),
  /** Statuses whose delivered messages get X-Virus-Scanned and X-AV-Status. */
  'add-headers': z.array(status).default([...MAIL_STATUSES]),
  'notify-sender': z.array(status).default(['infected']),
  'notify-recipients': z.array(status).default(['infected']),
  'notify-admin': z.array(status).default(['infected']),
  'admin-attachment': ADMIN_ATTACHMENT.default('report'),
  'filter-by-name': z.array(regex).default([]),
  'filter-by-type': z.array(mimeGlob).default([]),
  templates: templatesSchema.prefault({}),
});

const GROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Another group: its match lists, and any setting of the default group it changes. */
const groupSchema = z.strictObject({
  name: z.string().regex(GROUP_NAME, 'group names are 1-64 letters, digits, _ . -, starting with a letter or digit'),
  /** Envelope sender patterns (whole address, case-insensitive); `.*` = anyone, including `<>`. */
  senders: z.array(regex).min(1).default(['.*']),
  recipients: z.array(regex).min(1).default(['.*']),
  admin: z.array(address).optional(),
  actions: perStatus(action).optional(),
  'replace-with': perStatus(z.string().min(1)).optional(),
  quarantine: z.array(status).optional(),
  'copy-to': perStatus(z.array(address)).optional(),
  'prefix-subject': perStatus(oneLine).optional(),
  'add-headers': z.array(status).optional(),
  'notify-sender': z.array(status).optional(),
  'notify-recipients': z.array(status).optional(),
  'notify-admin': z.array(status).optional(),
  'admin-attachment': ADMIN_ATTACHMENT.optional(),
  'filter-by-name': z.array(regex).optional(),
  'filter-by-type': z.array(mimeGlob).optional(),
  templates: z
    .strictObject({ sender: templatePath.optional(), recipients: templatePath.optional(), admin: templatePath.optional(), removed: templatePath.optional() })
    .optional(),
});

export const DEFAULT_VIRUS_NAME_STATUS = [
  { pattern: '^Heuristics\\.Encrypted\\.', status: 'protected' as const },
  { pattern: '^Heuristics\\.', status: 'suspicious' as const },
  { pattern: '^PUA\\.', status: 'suspicious' as const },
];

/**
 * Families known to forge the envelope sender: telling "the sender" would mail an innocent third
 * party (backscatter). Worms and mass mailers send from harvested addresses; phishing never comes
 * from whom it claims.
 */
export const DEFAULT_SENDER_FORGING_NAMES = [
  'worm',
  'mass-?mail',
  'phish',
  '^Email\\.',
  'mydoom|netsky|bagle|beagle|sober|klez|sobig|mimail|zafi|swen|bugbear|lovgate|mytob|nimda|sircam|dumaru|stration|warezov',
];

export const mailSchema = z
  .strictObject({
    /** Engine ids asked about every document; default: scan.engines. */
    engines: z.array(z.string()).min(1).nullable().default(null),
    /** Also scan the whole raw message once (for what only the engine's own mail parser finds). */
    'scan-whole-message': z.boolean().default(false),
    /**
     * Messages up to this size are first scanned whole, in one engine call (the engine decodes
     * MIME itself); only when that is not clean, or the walker finds a MIME problem, are the
     * documents scanned one by one to name the culprit. 0 (the default) = always document by
     * document: a clean whole-message answer trusts the engine's MIME parser, and a message it
     * reads differently from mail clients (a delimiter followed by a tab, base64 after padding)
     * would pass unscanned.
     */
    'prescan-max-size': size.default(0),
    /** MIME walker limits (src/mime/limits.ts); exceeding one makes the message corrupted. */
    'max-depth': positiveInt.default(DEFAULT_MIME_LIMITS.maxDepth),
    'max-parts': positiveInt.default(DEFAULT_MIME_LIMITS.maxParts),
    'max-header-size': size.default(DEFAULT_MIME_LIMITS.maxHeaderSize),
    'max-decoded-size': size.default(DEFAULT_MIME_LIMITS.maxDecodedSize),
    'max-line-length': size.default(DEFAULT_MIME_LIMITS.maxLineLength),
    /** Decoded documents are held in memory up to this size, then spooled to a temp file. */
    'document-memory': size.default(1024 * 1024),
    /** A stray "=" in quoted-printable text (common in real mail) does not make a message corrupted. */
    'lenient-quoted-printable': z.boolean().default(true),
    /** From: of every notification. */
    'notify-from': address.default('postmaster@localhost'),
    /** Value of the X-Virus-Scanned header; null = not added. */
    'x-virus-scanned': z.string().regex(/^[^\r\n]+$/, 'one non-empty line').nullable().default('avgate'),
    /** Ordered: the first pattern that matches a virus name decides its status; others are infected. */
    'virus-name-status': z
      .array(z.strictObject({ pattern: regex, status: z.enum(NAME_STATUSES) }))
      .default(() => DEFAULT_VIRUS_NAME_STATUS.map((r) => ({ ...r }))),
    /** Virus names (patterns) of families that forge senders: the sender is never notified about them. */
    'sender-forging-names': z.array(regex).default(() => [...DEFAULT_SENDER_FORGING_NAMES]),
    /** Notify senders of bulk, list and automatic mail too (Precedence, List-Id, Auto-Submitted, <>). */
    'notify-sender-of-bulk': z.boolean().default(false),
    'default-group': defaultGroupSchema.prefault({}),
    /** Tried in order; the first whose senders and recipients both match takes the recipient. */
    groups: z.array(groupSchema).default([]),
  })
  .superRefine((mail, ctx) => {
    const seen = new Set<string>();
    mail.groups.forEach((g, i) => {
      if (g.name.toLowerCase() === 'default') {
        ctx.addIssue({ code: 'custom', path: ['groups', i, 'name'], message: 'the default group is configured in mail.default-group' });
      } else if (seen.has(g.name.toLowerCase())) {
        ctx.addIssue({ code: 'custom', path: ['groups', i, 'name'], message: `duplicate group name "${g.name}"` });
      }
      seen.add(g.name.toLowerCase());
    });
    const check = (actions: Partial<Record<MailStatus, MailAction>>, replace: Partial<Record<MailStatus, string>>, path: (string | number)[]) => {
      for (const s of MAIL_STATUSES) {
        if (actions[s] === 'replace' && replace[s] === undefined) {
          ctx.addIssue({ code: 'custom', path: [...path, 'actions', s], message: `action replace needs replace-with.${s} (a file)` });
        }
      }
    };
    const d = mail['default-group'];
    check(d.actions, d['replace-with'], ['default-group']);
    mail.groups.forEach((g, i) => {
      check({ ...d.actions, ...g.actions }, { ...d['replace-with'], ...g['replace-with'] }, ['groups', i]);
    });
  });

export type MailConfig = z.output<typeof mailSchema>;
export type MailGroupConfig = z.output<typeof groupSchema>;
export type MailDefaultGroupConfig = z.output<typeof defaultGroupSchema>;
