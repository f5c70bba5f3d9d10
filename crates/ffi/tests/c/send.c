/* Exercises mailspool.h as a C program would: open, send (headers, explicit envelope,
 * a file, errors), list the queue, and send from several threads on one handle.
 * Prints one line per step; tests/c_abi.rs checks the lines and the spool's nodes. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "mailspool.h"

static const char MSG[] =
    "From: App <app@sender.test>\n"
    "To: one@rcpt.test, Two <two@rcpt.test>\n"
    "Cc: three@rcpt.test\n"
    "Bcc: secret@rcpt.test\n"
    "Subject: from C\n"
    "\n"
    "hello from C\n";

static mailspool_t *spool;

static void *sender_thread(void *arg) {
    long failures = 0;
    for (int i = 0; i < 25; i++) {
        const char *to[] = {"thread@rcpt.test"};
        char body[128];
        int n = snprintf(body, sizeof body, "Subject: t%ld/%d\n\nx\n", (long)arg, i);
        if (mailspool_send_mail(spool, (const uint8_t *)body, (size_t)n, to, 1,
                                "app@sender.test", MAILSPOOL_DEFERRED, NULL, NULL) != MAILSPOOL_OK)
            failures++;
    }
    return (void *)failures;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: send SPOOL_DIR MESSAGE_FILE\n");
        return 2;
    }
    int rc = mailspool_open(NULL, argv[1], &spool);
    if (rc != MAILSPOOL_OK) {
        printf("open failed: %s %s\n", mailspool_status_name(rc), mailspool_last_error());
        return 1;
    }
    printf("version %s\n", mailspool_version());

    char *id = NULL;
    rc = mailspool_send_mail(spool, (const uint8_t *)MSG, strlen(MSG), NULL, 0, NULL,
                             MAILSPOOL_DEFERRED, NULL, &id);
    printf("headers %s %s\n", mailspool_status_name(rc), id ? id : "-");
    mailspool_free(id);

    const char *to[] = {"explicit@rcpt.test", "<other@rcpt.test>"};
    id = NULL;
    rc = mailspool_send_mail(spool, (const uint8_t *)MSG, strlen(MSG), to, 2, "",
                             MAILSPOOL_DEFERRED, "Cid.1", &id);
    printf("explicit %s %s\n", mailspool_status_name(rc), id ? id : "-");
    mailspool_free(id);

    rc = mailspool_send_mail(spool, (const uint8_t *)MSG, strlen(MSG), to, 2, "",
                             MAILSPOOL_DEFERRED, "Cid.1", NULL);
    printf("again %s exit=%d\n", mailspool_status_name(rc), mailspool_last_exit_code());

    const char *bad[] = {"not an address"};
    rc = mailspool_send_mail(spool, (const uint8_t *)MSG, strlen(MSG), bad, 1, NULL,
                             MAILSPOOL_DEFERRED, NULL, NULL);
    printf("bad %s exit=%d error=%s\n", mailspool_status_name(rc), mailspool_last_exit_code(),
           mailspool_last_error());

    const char nobody[] = "Subject: nobody\n\nx\n";
    rc = mailspool_send_mail(spool, (const uint8_t *)nobody, strlen(nobody), NULL, 0, NULL,
                             MAILSPOOL_DEFERRED, NULL, NULL);
    printf("norcpt %s\n", mailspool_status_name(rc));

    rc = mailspool_send_mail(spool, (const uint8_t *)MSG, strlen(MSG), NULL, 0, NULL, 7, NULL,
                             NULL);
    printf("mode %s\n", mailspool_status_name(rc));

    rc = mailspool_send_mail(NULL, (const uint8_t *)MSG, strlen(MSG), NULL, 0, NULL,
                             MAILSPOOL_DEFERRED, NULL, NULL);
    printf("nullhandle %s\n", mailspool_status_name(rc));

    id = NULL;
    rc = mailspool_send_file(spool, argv[2], NULL, 0, NULL, MAILSPOOL_DEFERRED, NULL, &id);
    printf("file %s %s\n", mailspool_status_name(rc), id ? id : "-");
    mailspool_free(id);

    rc = mailspool_send_file(spool, "/nonexistent/message", NULL, 0, NULL, MAILSPOOL_DEFERRED,
                             NULL, NULL);
    printf("nofile %s exit=%d\n", mailspool_status_name(rc), mailspool_last_exit_code());

    pthread_t threads[4];
    for (long t = 0; t < 4; t++) pthread_create(&threads[t], NULL, sender_thread, (void *)t);
    long failures = 0;
    for (int t = 0; t < 4; t++) {
        void *f;
        pthread_join(threads[t], &f);
        failures += (long)f;
    }
    printf("threads failures=%ld\n", failures);

    char *json = NULL;
    rc = mailspool_queue_json(spool, &json);
    printf("queue %s %zu\n", mailspool_status_name(rc), json ? strlen(json) : 0);
    if (json) printf("json %s\n", json);
    mailspool_free(json);
    mailspool_close(spool);
    return 0;
}
