#!/bin/sh
# Alertmanager's config with the receiver the user set: writes OUT, the shipped config (SHIPPED,
# grafana/alertmanager.yml) plus an integration for ALERT_WEBHOOK_URL under its last receiver,
# then runs COMMAND, if any (compose.yml: Alertmanager itself, reading OUT).
#
#   alertmanager-config.sh SHIPPED OUT [COMMAND ARG...]
#
# Alertmanager expands no environment variables in its config file, and url_file (the URL read from
# a file) is Alertmanager 0.26's, newer than Debian's 0.25 that the tests run; so the URL is written
# in here, at each start. By the URL: Slack's incoming webhooks and Discord's webhooks get
# Alertmanager's integrations for them (those services refuse its plain JSON), any other URL a plain
# webhook (ntfy, healthchecks.io, your own). No URL: the receiver has no integration, the alerts
# show in Alertmanager's UI and nothing is sent. POSIX sh: the prom/alertmanager image has busybox.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 SHIPPED OUT [COMMAND ARG...]" >&2
    exit 2
fi
shipped=$1 out=$2
shift 2

url=${ALERT_WEBHOOK_URL:-}
quoted=$(printf '%s' "$url" | sed "s/'/''/g")  # a YAML single-quoted string: ' doubled
case $url in
    "") kind="" field="" ;;
    https://hooks.slack.com/*) kind=slack_configs field=api_url ;;
    https://discord.com/api/webhooks/* | https://discordapp.com/api/webhooks/*) kind=discord_configs field=webhook_url ;;
    *) kind=webhook_configs field=url ;;
esac

{
    cat "$shipped"
    if [ -n "$kind" ]; then
        printf "    %s:\n      - %s: '%s'\n        send_resolved: true\n" "$kind" "$field" "$quoted"
    fi
} > "$out"

# one line in `docker compose logs alertmanager`: where the alerts go (the host only: the rest of
# such a URL is its secret)
if [ -n "$kind" ]; then
    host=${url#*://}
    host=${host%%/*}
    host=${host%%\?*}
    echo "alertmanager-config.sh: alerts go to ${host##*@} ($kind, from ALERT_WEBHOOK_URL)" >&2
else
    echo "alertmanager-config.sh: ALERT_WEBHOOK_URL is not set: alerts show in Alertmanager's UI and nothing is sent" >&2
fi

if [ $# -gt 0 ]; then
    exec "$@"
fi
