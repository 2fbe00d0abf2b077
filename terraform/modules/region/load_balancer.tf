# The public entry of the region: an application load balancer over the edges,
# a TLS certificate, and Route 53 records. Clients resolve
# <endpoint_name>.<zone_name> to the region with the lowest latency.
#
# Two kinds of target group. "edges" contains every edge, with cookie
# stickiness, so a client keeps reaching the edge it first landed on. Each edge also has a
# target group of its own behind the host name <edge>.<endpoint host>, so a
# client redirected to the edge that owns its user (close code 4009) can reach
# exactly that edge through the load balancer.

resource "aws_acm_certificate" "edge" {
  domain_name               = local.endpoint_host
  subject_alternative_names = values(local.edge_hosts)
  validation_method         = "DNS"

  tags = { Name = "${local.prefix}-edge" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "certificate_validation" {
  for_each = {
    for option in aws_acm_certificate.edge.domain_validation_options : option.domain_name => option
  }

  zone_id = var.dns.zone_id
  name    = each.value.resource_record_name
  type    = each.value.resource_record_type
  records = [each.value.resource_record_value]
  ttl     = 300
  # Every region's certificate covers the shared endpoint name, whose
  # validation record is the same for all of them.
  # NOTE: removing one region deletes that shared record while the other
  # regions' certificates still renew with it. Apply once more afterwards to
  # recreate it from the remaining regions.
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "edge" {
  certificate_arn         = aws_acm_certificate.edge.arn
  validation_record_fqdns = [for record in aws_route53_record.certificate_validation : record.fqdn]
}

resource "aws_lb" "edge" {
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.load_balancer.id]
  subnets                    = var.network.public_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = var.settings.load_balancer.deletion_protection
  # The load balancer closes WebSocket connections with no frame for this
  # long, and clients reconnect and sync from their cursors.
  idle_timeout = var.settings.load_balancer.idle_timeout_s

  dynamic "access_logs" {
    for_each = var.settings.load_balancer.access_logs_bucket == null ? [] : [var.settings.load_balancer.access_logs_bucket]

    content {
      bucket  = access_logs.value
      prefix  = local.prefix
      enabled = true
    }
  }

  tags = { Name = "${local.prefix}-edge" }
}

resource "aws_lb_target_group" "edges" {
  port                 = values(var.settings.edges)[0].port
  protocol             = "HTTP"
  vpc_id               = var.network.vpc_id
  target_type          = "instance"
  deregistration_delay = 30

  stickiness {
    enabled         = true
    type            = "lb_cookie"
    cookie_duration = 86400
  }

  health_check {
    path                = "/healthz"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = { Name = "${local.prefix}-edges" }
}

resource "aws_lb_target_group_attachment" "edges" {
  for_each = var.settings.edges

  target_group_arn = aws_lb_target_group.edges.arn
  target_id        = aws_instance.edge[each.key].id
  port             = each.value.port
}

resource "aws_lb_target_group" "edge" {
  for_each = var.settings.edges

  port                 = each.value.port
  protocol             = "HTTP"
  vpc_id               = var.network.vpc_id
  target_type          = "instance"
  deregistration_delay = 30

  health_check {
    path                = "/healthz"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = { Name = "${local.prefix}-edge-${each.key}" }
}

resource "aws_lb_target_group_attachment" "edge" {
  for_each = var.settings.edges

  target_group_arn = aws_lb_target_group.edge[each.key].arn
  target_id        = aws_instance.edge[each.key].id
  port             = each.value.port
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.edge.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.edge.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = aws_acm_certificate_validation.edge.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.edges.arn
  }
}

resource "aws_lb_listener_rule" "edge" {
  for_each = var.settings.edges

  listener_arn = aws_lb_listener.https.arn

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.edge[each.key].arn
  }

  condition {
    host_header {
      values = [local.edge_hosts[each.key]]
    }
  }
}

resource "aws_route53_record" "endpoint" {
  zone_id        = var.dns.zone_id
  name           = local.endpoint_host
  type           = "A"
  set_identifier = var.name

  latency_routing_policy {
    region = var.network.aws_region
  }

  # Route 53 leaves out a region whose load balancer has no healthy edge.
  alias {
    name                   = aws_lb.edge.dns_name
    zone_id                = aws_lb.edge.zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "edge" {
  for_each = local.edge_hosts

  zone_id = var.dns.zone_id
  name    = each.value
  type    = "A"

  alias {
    name                   = aws_lb.edge.dns_name
    zone_id                = aws_lb.edge.zone_id
    evaluate_target_health = true
  }
}
