# A real background process (python -m http.server) started by a provisioner. Its
# supervising shell removes the pid file when the server exits, so a killed server shows
# as drift (see the replace trigger) and apply starts it again.
variable "dir" {
  type = string
}
variable "port" {
  type = number
}
variable "python" {
  type = string
}

locals {
  pidfile = "${var.dir}/server.pid"
}

resource "terraform_data" "server" {
  input            = { pidfile = local.pidfile, port = var.port }
  triggers_replace = fileexists(local.pidfile) ? "up" : (timestamp() == "" ? "never" : "up")

  provisioner "local-exec" {
    command     = <<-EOT
      setsid sh -c '"$PY" -m http.server "$PORT" --bind 127.0.0.1 --directory "$DIR" & echo $! > "$PIDFILE"; wait $!; rm -f "$PIDFILE"' </dev/null >/dev/null 2>&1 &
      for i in $(seq 1 100); do
        "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$PORT" 2>/dev/null && exit 0
        sleep 0.1
      done
      echo "server did not listen on $PORT" >&2
      exit 1
    EOT
    environment = { PY = var.python, PORT = var.port, DIR = var.dir, PIDFILE = local.pidfile }
  }
  provisioner "local-exec" {
    when    = destroy
    command = "p='${self.input.pidfile}'; [ -f \"$p\" ] && kill $(cat \"$p\"); for i in $(seq 1 50); do [ -f \"$p\" ] || exit 0; sleep 0.1; done"
  }
}

output "endpoint" {
  value = "http://127.0.0.1:${var.port}"
}
