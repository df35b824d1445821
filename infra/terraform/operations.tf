# What operators look at: the Azure Monitor workbook and the log alert rules over Application
# Insights, and (given an e-mail address) the action group the alerts notify. The workbook and
# the alerts' queries are infra/monitoring's JSON files, which infra/bicep loads too; they read
# only the metrics and log events the code names in writeback/cloud/signals.py
# (docs/operations.md#dashboards-and-alerts).

locals {
  alerts = jsondecode(file("${path.module}/../monitoring/alerts.json"))
  # The two settings a deployment chooses; every other value is the file's.
  alert_windows = {
    "relay-offline" = "PT${var.relay_offline_minutes}M"
  }
  alert_thresholds = {
    "failure-rate" = var.alert_failure_rate_percent
  }
}

resource "azurerm_application_insights_workbook" "operations" {
  name                = uuidv5("url", "${data.azurerm_resource_group.main.id}/writeback-workbook")
  resource_group_name = data.azurerm_resource_group.main.name
  location            = local.location
  display_name        = "Writeback (${var.name_prefix})"
  category            = "workbook"
  # azurerm wants the source resource's id in lower case.
  source_id = lower(azurerm_application_insights.main.id)
  data_json = replace(file("${path.module}/../monitoring/workbook.json"), "{applicationInsightsId}", azurerm_application_insights.main.id)
}

resource "azurerm_monitor_action_group" "operators" {
  count               = var.alert_email == "" ? 0 : 1
  name                = "ag-${var.name_prefix}-writeback"
  resource_group_name = data.azurerm_resource_group.main.name
  short_name          = "writeback"

  email_receiver {
    name                    = "operators"
    email_address           = var.alert_email
    use_common_alert_schema = true
  }
}

resource "azurerm_monitor_scheduled_query_rules_alert_v2" "writeback" {
  for_each             = local.alerts
  name                 = "alert-${var.name_prefix}-${each.key}"
  resource_group_name  = data.azurerm_resource_group.main.name
  location             = local.location
  display_name         = each.value.displayName
  description          = each.value.description
  severity             = each.value.severity
  enabled              = true
  scopes               = [azurerm_application_insights.main.id]
  evaluation_frequency = each.value.evaluationFrequency
  window_duration      = lookup(local.alert_windows, each.key, each.value.windowSize)

  criteria {
    query                   = replace(each.value.query, "{domains}", jsonencode(sort(keys(local.domains))))
    time_aggregation_method = each.value.timeAggregation
    # Only the failure rate names one; without it the rule counts the query's rows.
    metric_measure_column = each.value.metricMeasureColumn == "" ? null : each.value.metricMeasureColumn
    operator              = each.value.operator
    threshold             = lookup(local.alert_thresholds, each.key, each.value.threshold)

    dynamic "dimension" {
      for_each = each.value.dimensions
      content {
        name     = dimension.value
        operator = "Include"
        values   = ["*"]
      }
    }

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  auto_mitigation_enabled = true

  action {
    action_groups = azurerm_monitor_action_group.operators[*].id
  }
}
