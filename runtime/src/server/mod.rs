//! Receiving side: ESMTP server, STARTTLS, limits, T4, T6.
