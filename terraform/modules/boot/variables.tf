variable "files" {
  description = "Files to write before anything starts, keyed by absolute path. Paths must lie outside data_volume.mount_point, because the volume is mounted over that directory afterwards."
  type = map(object({
    content     = string
    owner       = optional(string, "root")
    permissions = optional(string, "0644")
  }))
  default = {}

  validation {
    condition     = alltrue([for path in keys(var.files) : startswith(path, "/")])
    error_message = "Every key of files must be an absolute path."
  }
}

variable "data_volume" {
  description = "EBS volume to format on first boot (XFS) and mount, or null for an instance without one. owner is the user that gets the mount point."
  type = object({
    volume_id   = string
    mount_point = string
    owner       = string
  })
  default = null
}

variable "commands" {
  description = "Shell commands run as root, in order, after the volume is mounted and before the services start."
  type        = list(string)
  default     = []
}

variable "services" {
  description = "systemd services to write, enable and start, keyed by unit name without \".service\". exec_start is the full command line. exec_start_pre, if set, runs before every start as the same user."
  type = map(object({
    description    = string
    user           = string
    exec_start     = string
    exec_start_pre = optional(string)
    limit_nofile   = optional(number, 65536)
  }))
  default = {}
}
