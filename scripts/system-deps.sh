#!/usr/bin/env bash
# Installs the Debian packages avgate and its tests need, if any is missing.
# Runs `apt-get update` once, then one `apt-get install`. Needs root (or sudo).
set -euo pipefail
PACKAGES=(clamav-daemon clamav clamav-testfiles c-icap libc-icap-mod-virus-scan squid curl
  postfix swaks libio-socket-ssl-perl libnet-ssleay-perl openssl clamsmtp amavisd-new chromium dovecot-imapd
  dovecot-pop3d vsftpd nginx-light lftp socat redis-server postgresql)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "avgate: installing Debian packages: ${missing[*]}" >&2
$SUDO apt-get update -q
# Postfix asks how to configure itself; avgate's tests give it their own config directory.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections 2>/dev/null || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's packages may start their own services; avgate runs its own clamd and c-icap.
for svc in clamav-daemon clamav-freshclam c-icap squid postfix clamsmtp amavis dovecot vsftpd nginx redis-server postgresql; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
