# Two resources, the second one slow: a window to kill the controller mid-apply.
variable "dir" {
  type = string
}
variable "sleep" {
  type    = number
  default = 3
}

resource "terraform_data" "fast" {
  provisioner "local-exec" {
    command = "echo fast >> '${var.dir}/created.log'"
  }
}

resource "terraform_data" "slow" {
  depends_on = [terraform_data.fast]

  provisioner "local-exec" {
    command = "echo slow-start >> '${var.dir}/created.log'; sleep ${var.sleep}; echo slow-done >> '${var.dir}/created.log'"
  }
}
