#!/bin/sh
# RabbitMQ from Debian's package with the user the document server logs in as.
set -eu
mkdir -p /etc/rabbitmq
printf 'default_user = %s\ndefault_pass = %s\nlisteners.tcp.default = 127.0.0.1:5672\n' \
  "$RABBITMQ_DEFAULT_USER" "$RABBITMQ_DEFAULT_PASS" > /etc/rabbitmq/rabbitmq.conf
export HOME=/var/lib/rabbitmq
exec rabbitmq-server
