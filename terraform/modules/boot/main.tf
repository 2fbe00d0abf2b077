# Renders cloud-init user data: write files, mount the data volume, run
# commands, start services. It creates no resources, so it needs no provider.

locals {
  mount_script_path = "/usr/local/sbin/chatmesh-mount-data"

  mount_script_file = var.data_volume == null ? {} : {
    (local.mount_script_path) = {
      content     = templatefile("${path.module}/templates/mount-data-volume.sh.tftpl", var.data_volume)
      owner       = "root"
      permissions = "0755"
    }
  }

  service_files = {
    for name, service in var.services : "/etc/systemd/system/${name}.service" => {
      content     = templatefile("${path.module}/templates/service.tftpl", service)
      owner       = "root"
      permissions = "0644"
    }
  }

  all_files = merge(var.files, local.mount_script_file, local.service_files)

  write_files = [
    for path, file in local.all_files : {
      path        = path
      content     = file.content
      owner       = "${file.owner}:${file.owner}"
      permissions = file.permissions
    }
  ]

  runcmd = concat(
    var.data_volume == null ? [] : [local.mount_script_path],
    var.commands,
    length(var.services) == 0 ? [] : ["systemctl daemon-reload"],
    [for name in keys(var.services) : "systemctl enable --now ${name}.service"],
  )

  user_data = "#cloud-config\n${yamlencode({ write_files = local.write_files, runcmd = local.runcmd })}"
}
