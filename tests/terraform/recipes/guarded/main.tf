# Refuses to be destroyed while a "block" file exists in dir.
variable "dir" {
  type = string
}

resource "terraform_data" "guarded" {
  input = var.dir

  provisioner "local-exec" {
    when    = destroy
    command = "if [ -e '${self.input}/block' ]; then echo 'still in use' >&2; exit 1; fi"
  }
}
