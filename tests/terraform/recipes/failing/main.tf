# A provisioner that fails, printing a variable's value that must not reach status.
variable "password" {
  type    = string
  default = "unset-password"
}

resource "terraform_data" "broken" {
  provisioner "local-exec" {
    command = "echo 'connecting with ${var.password}'; echo 'database refused the connection' >&2; exit 3"
  }
}
