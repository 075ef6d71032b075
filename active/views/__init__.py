"""Read-models and actions for the screens and reports: status, dashboard data, agreement, review, export, accounts."""
