# A Terraform recipe that needs no provider download: the built-in terraform_data
# resource with local-exec provisioners. It writes a "site" (an index.html) into a
# directory and publishes where it is. Deleting the file is drift: the replace trigger is
# unknown at plan time when the file is gone, so `terraform plan` shows a replacement and
# converge applies it again.
variable "site_dir" {
  type        = string
  description = "Where to write the site (created if missing)."
}
variable "title" {
  type    = string
  default = "Hello from converge"
}
variable "api_token" {
  type      = string
  default   = "example-token"
  sensitive = true
}

locals {
  index = "${var.site_dir}/index.html"
}

resource "terraform_data" "site" {
  input            = { index = local.index, title = var.title }
  triggers_replace = fileexists(local.index) ? "present" : (timestamp() == "" ? "never" : "present")

  provisioner "local-exec" {
    command     = "mkdir -p \"$(dirname \"$INDEX\")\" && printf '<h1>%s</h1>\\n' \"$TITLE\" > \"$INDEX\""
    environment = { INDEX = local.index, TITLE = var.title }
  }
  provisioner "local-exec" {
    when    = destroy
    command = "rm -f '${self.input.index}'"
  }
}

# A change of the title rewrites the page (an update of the running service).
resource "terraform_data" "title" {
  triggers_replace = [var.title]
  depends_on       = [terraform_data.site]

  provisioner "local-exec" {
    command     = "printf '<h1>%s</h1>\\n' \"$TITLE\" > \"$INDEX\""
    environment = { INDEX = local.index, TITLE = var.title }
  }
}

output "index" {
  value = local.index
}
output "url" {
  value = "file://${local.index}"
}
output "api_token" {
  value     = var.api_token
  sensitive = true
}
