# A file whose content is a variable, watched for drift: if the file is gone, the
# replace trigger is unknown at plan time, so `plan` shows a replacement. (After a create
# it resolves to "present" at apply time, so a fresh apply is stable.)
variable "dir" {
  type = string
}
variable "content" {
  type    = string
  default = "hello"
}
variable "token" {
  type      = string
  default   = "tok-default-secret"
  sensitive = true
}

locals {
  path = "${var.dir}/made.txt"
}

resource "terraform_data" "file" {
  input            = { path = local.path, content = var.content }
  triggers_replace = fileexists(local.path) ? "present" : (timestamp() == "" ? "never" : "present")

  provisioner "local-exec" {
    command     = "printf '%s' \"$CONTENT\" > \"$P\""
    environment = { CONTENT = var.content, P = local.path }
  }
  provisioner "local-exec" {
    when    = destroy
    command = "rm -f '${self.input.path}'"
  }
}

# Rewrites the file when the content changes (an update in place of the service).
resource "terraform_data" "content" {
  triggers_replace = [var.content]
  depends_on       = [terraform_data.file]

  provisioner "local-exec" {
    command     = "printf '%s' \"$CONTENT\" > \"$P\""
    environment = { CONTENT = var.content, P = local.path }
  }
}

# Created once: counts its creations in created.log.
resource "terraform_data" "marker" {
  input = var.dir

  provisioner "local-exec" {
    command = "echo marker >> '${var.dir}/created.log'"
  }
}

output "path" {
  value = local.path
}
output "greeting" {
  value = "hello ${var.content}"
}
output "token" {
  value     = var.token
  sensitive = true
}
output "unlisted" {
  value = "not published"
}
