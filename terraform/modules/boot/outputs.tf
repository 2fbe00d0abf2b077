output "user_data" {
  description = "The cloud-config document to pass as an instance's user_data."
  value       = local.user_data

  precondition {
    condition     = length(local.user_data) <= 16384
    error_message = "The user data is ${length(local.user_data)} bytes, more than the 16384 bytes EC2 accepts; shrink the files it carries."
  }
}
