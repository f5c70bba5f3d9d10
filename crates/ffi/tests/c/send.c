/* Exercises mailspool.h as a C program would: open, send (headers, explicit envelope,
 * a file, errors), list the queue, and send from several threads on one handle.
 * Prints one line per step; tests/c_abi.rs checks the lines and the spool's nodes. */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
static const char *spool_dir;

/* The commit's rules seen from C: on success the message's nodes are in tier 0 (one per
 * recipient, names TIME-ID-TO-FROM), mode 0600, without the Bcc header; nothing is left
 * in tmp/. Returns the number of nodes of `id`, or -1 on a broken rule. */
static int check_nodes(const char *id) {
    char path[4096];
    snprintf(path, sizeof path, "%s/0", spool_dir);
    DIR *d = opendir(path);
    if (!d) return -1;
    int count = 0, broken = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *dash = strchr(e->d_name, '-');
        if (e->d_name[0] == '.' || !dash || strncmp(dash + 1, id, strlen(id)) != 0 ||
            dash[1 + strlen(id)] != '-')
            continue;
        count++;
        char file[8192];
        snprintf(file, sizeof file, "%s/%s", path, e->d_name);
        struct stat st;
        if (stat(file, &st) != 0 || (st.st_mode & 07777) != 0600) broken = 1;
        FILE *f = fopen(file, "r");
        if (!f) { broken = 1; continue; }
        char line[1024];
        while (fgets(line, sizeof line, f) && strcmp(line, "\n") != 0)
            if (strncmp(line, "Bcc:", 4) == 0 || strstr(line, "secret@")) broken = 1;
        fclose(f);
    }
    closedir(d);
    snprintf(path, sizeof path, "%s/tmp", spool_dir);
    if ((d = opendir(path))) {
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') broken = 1;
        closedir(d);
    }
    return broken ? -1 : count;
}

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
    spool_dir = argv[1];
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
    printf("headers nodes %d\n", id ? check_nodes(id) : -1);
    mailspool_free(id);

    const char *to[] = {"explicit@rcpt.test", "<other@rcpt.test>"};
    id = NULL;
    rc = mailspool_send_mail(spool, (const uint8_t *)MSG, strlen(MSG), to, 2, "",
                             MAILSPOOL_DEFERRED, "Cid.1", &id);
    printf("explicit %s %s\n", mailspool_status_name(rc), id ? id : "-");
    printf("explicit nodes %d\n", id ? check_nodes(id) : -1);
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

    const char *batch[] = {MSG, "Subject: nobody\n\nx\n", "To: batch@rcpt.test\n\nb\n"};
    size_t lengths[] = {strlen(batch[0]), strlen(batch[1]), strlen(batch[2])};
    int32_t statuses[3] = {-1, -1, -1};
    char *ids[3] = {NULL, NULL, NULL};
    rc = mailspool_send_many(spool, (const uint8_t *const *)batch, lengths, 3, NULL, 0, NULL,
                             statuses, ids);
    printf("many %s %s %s %s error=%s\n", mailspool_status_name(rc),
           mailspool_status_name(statuses[0]), mailspool_status_name(statuses[1]),
           mailspool_status_name(statuses[2]), mailspool_last_error());
    printf("many nodes %d %s %d\n", ids[0] ? check_nodes(ids[0]) : -1, ids[1] ? "id" : "null",
           ids[2] ? check_nodes(ids[2]) : -1);
    for (int i = 0; i < 3; i++) mailspool_free(ids[i]);

    char *json = NULL;
    rc = mailspool_queue_json(spool, &json);
    printf("queue %s %zu\n", mailspool_status_name(rc), json ? strlen(json) : 0);
    if (json) printf("json %s\n", json);
    mailspool_free(json);
    mailspool_close(spool);
    return 0;
}
