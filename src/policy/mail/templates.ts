import { readFileSync } from 'node:fs';
import { AvgateError } from '../../core/errors.js';

/**
 * Notification templates. A template file is a small mail: a `Subject:` line, an empty line, the
 * body. The removal notice (the text left where a document was removed) is a body only.
 * Macros are written `{{NAME}}`; an unknown name stays as it is, so a typo shows in the mail.
 */
export interface NotificationTemplate {
  subject: string;
  body: string;
}

export const NOTIFICATION_KINDS = ['sender', 'recipients', 'admin'] as const;
export type NotificationKind = (typeof NOTIFICATION_KINDS)[number];

export interface MailTemplates {
  sender: NotificationTemplate;
  recipients: NotificationTemplate;
  admin: NotificationTemplate;
  /** Text of the part left in place of a removed document. */
  removed: string;
}

/** Macros of the notifications (documented in docs/mail-policy.md; a test checks the two agree). */
export const NOTIFICATION_MACROS = [
  'VIRUS_NAMES', 'STATUS', 'ACTION', 'SENDER', 'RECIPIENTS', 'SUBJECT', 'MESSAGE_ID', 'DATE', 'QUEUE_ID',
  'QUARANTINE_ID', 'REMOVED_FILES', 'GROUP', 'HEADERS', 'REPORT',
] as const;
export type NotificationMacro = (typeof NOTIFICATION_MACROS)[number];

/** Macros of the removal notice. */
export const NOTICE_MACROS = ['FILE_NAME', 'CONTENT_TYPE', 'STATUS', 'VIRUS_NAMES', 'REASON', 'ACTION', 'GROUP', 'QUARANTINE_ID'] as const;
export type NoticeMacro = (typeof NOTICE_MACROS)[number];

export const DEFAULT_TEMPLATES: Readonly<MailTemplates> = Object.freeze({
  sender: {
    subject: 'Virus found in your message: {{SUBJECT}}',
    body: `This is an automatic message from the antivirus gateway of the receiving mail system.

Your message
  Subject:    {{SUBJECT}}
  Date:       {{DATE}}
  Message-ID: {{MESSAGE_ID}}
  To:         {{RECIPIENTS}}
was found to be {{STATUS}}: {{VIRUS_NAMES}}

What was done: {{ACTION}}
Removed files: {{REMOVED_FILES}}

Your computer may be infected. Please check it with an up-to-date antivirus program.
`,
  },
  recipients: {
    subject: 'Virus found in a message to you: {{SUBJECT}}',
    body: `This is an automatic message from the antivirus gateway of your mail system.

A message to you
  From:       {{SENDER}}
  Subject:    {{SUBJECT}}
  Date:       {{DATE}}
  Message-ID: {{MESSAGE_ID}}
was found to be {{STATUS}}: {{VIRUS_NAMES}}

What was done: {{ACTION}}
Removed files: {{REMOVED_FILES}}
Quarantine id: {{QUARANTINE_ID}}

If you expected this message, ask your mail administrator and quote the quarantine id.
`,
  },
  admin: {
    subject: '[avgate] {{STATUS}}: {{VIRUS_NAMES}} from {{SENDER}}',
    body: `The antivirus gateway handled a message that was {{STATUS}}.

{{REPORT}}
Original headers:
{{HEADERS}}
`,
  },
  removed: `This part of the message was {{ACTION}} by the antivirus gateway.

  File:    {{FILE_NAME}}
  Type:    {{CONTENT_TYPE}}
  Status:  {{STATUS}}
  Found:   {{VIRUS_NAMES}}
  Reason:  {{REASON}}
  Quarantine id: {{QUARANTINE_ID}}
`,
});

/** Text of a notification template file: `Subject: ...`, an empty line, the body. */
export function parseNotificationTemplate(text: string, label: string): NotificationTemplate {
  const normalized = text.replace(/\r\n?/g, '\n').replace(/^\uFEFF/, '');
  const m = /^Subject:[ \t]*([^\n]*)\n\n([\s\S]*)$/i.exec(normalized);
  if (!m) {
    throw new AvgateError('AVG_ERR_CONFIG', `mail template ${label}: must start with a "Subject:" line and an empty line before the body`);
  }
  return { subject: (m[1] ?? '').trim(), body: m[2] ?? '' };
}

function readTemplateFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new AvgateError('AVG_ERR_CONFIG', `mail template ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/** Template files named in the config, read at startup; null = the built-in text. */
export function loadMailTemplates(
  paths: Partial<Record<NotificationKind | 'removed', string | null>>,
  read: (path: string) => string = readTemplateFile,
): MailTemplates {
  const out: MailTemplates = { ...DEFAULT_TEMPLATES };
  for (const kind of NOTIFICATION_KINDS) {
    const p = paths[kind];
    if (p !== null && p !== undefined) out[kind] = parseNotificationTemplate(read(p), p);
  }
  const removed = paths.removed;
  if (removed !== null && removed !== undefined) out.removed = read(removed).replace(/\r\n?/g, '\n');
  return out;
}

/**
 * A value for a header: CR, LF and other control characters become spaces, so no macro value
 * (a subject, a file name, a virus name chosen by an attacker) can start a header of its own.
 */
export function headerSafe(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\u0000-\u001f\u007f\u2028\u2029]+/g, ' ');
}

/** A value for a body: line breaks kept (as LF), other control characters but TAB removed. */
export function bodySafe(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/\r\n?/g, '\n').replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, '');
}

/**
 * Fills `{{NAME}}` macros in one pass: a value that itself contains `{{...}}` is not expanded
 * again. In `header` mode the result is one line.
 */
export function renderTemplate(template: string, values: Readonly<Record<string, string>>, mode: 'header' | 'body'): string {
  const out = template.replace(/\{\{([A-Z_]+)\}\}/g, (whole, name: string) => {
    if (!Object.prototype.hasOwnProperty.call(values, name)) return whole;
    const v = values[name] as string;
    return mode === 'header' ? headerSafe(v) : bodySafe(v);
  });
  return mode === 'header' ? headerSafe(out).replace(/ {2,}/g, ' ').trim() : out;
}
