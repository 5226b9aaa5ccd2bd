//! Sending side: routes, SMTP client, STARTTLS, certificate validation, TLS connectivity test.
