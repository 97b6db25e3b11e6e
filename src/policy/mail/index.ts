/**
 * The mail filter's policy: statuses, groups, per-status actions, notifications, the attachment
 * filter. Pure — no sockets; the SMTP transport and the MIME walker call in here (docs/mail-policy.md).
 */
export * from './facts.js';
export * from './filter.js';
export * from './groups.js';
export * from './mime-text.js';
export * from './notify.js';
export * from './plan.js';
export * from './status.js';
export * from './templates.js';
