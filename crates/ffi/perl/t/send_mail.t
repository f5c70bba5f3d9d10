# Mail::Spool 0.50's send_mail through libmailspool, checked on the spool's own files:
# one 0.50 node per recipient in tier 0, the Bcc header not stored, mode 0600, nothing
# left in tmp/, nothing at all for a refused message.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use Mail::Spool qw(send_mail);

my $dir = tempdir(CLEANUP => 1);
my $spool_dir = "$dir/spool";
open(my $c, '>', "$dir/mailspool.toml") or die $!;
print $c "hostname = \"test.host\"\n";
close $c;
$ENV{MAILSPOOL_CONFIG} = "$dir/mailspool.toml";
delete $ENV{MAILSPOOL_SPOOL};

# Node names in tier 0: TIME-ID-TO-FROM (the test's addresses have no '-').
sub nodes {
    opendir(my $d, "$spool_dir/0") or return ();
    my @n = grep { !/^\./ && !/\.NFSLock$/ } readdir $d;
    return map { my @p = split /-/, $_, 4; { name => $_, id => $p[1], to => $p[2], from => $p[3] } } @n;
}
sub nodes_of { my $id = shift; return sort { $a->{to} cmp $b->{to} } grep { $_->{id} eq $id } nodes() }
sub slurp { open(my $f, '<', shift) or die $!; local $/; return <$f> }

my $spool = Mail::Spool->new(dequeue_dir => $spool_dir);
is($spool->dequeue_dir, $spool_dir, 'dequeue_dir is a property, as in 0.50');

my $msg = "From: App <app\@sender.test>\nTo: one\@rcpt.test\nCc: two\@rcpt.test\n"
        . "Bcc: secret\@rcpt.test\nSubject: perl\n\nhello from perl\n";
my $id = $spool->send_mail(message => $msg, delivery => 'Deferred');
ok($id, "send_mail returns the id ($id)");
my @n = nodes_of($id);
is_deeply([map { $_->{to} } @n], ['one@rcpt.test', 'secret@rcpt.test', 'two@rcpt.test'],
          'one node per recipient from To, Cc and Bcc');
is($_->{from}, 'app@sender.test', 'sender from From') for @n;
for my $node (@n) {
    my $path = "$spool_dir/0/$node->{name}";
    my $text = slurp($path);
    my ($head) = split /\n\n/, $text, 2;
    unlike($head, qr/secret\@/, 'Bcc is not stored');
    like($text, qr/\n\nhello from perl\n\z/, 'body stored');
    is((stat $path)[2] & 07777, 0600, 'node is mode 0600');
}

# 0.50's argument shapes: to as a scalar, from '<>', message as a scalar ref, an array
# ref and an object with as_string; filehandle; filename; delivery 'Standard' and an
# unknown word (both Deferred).
$id = $spool->send_mail({to => 'solo@rcpt.test', from => '<>', message => \$msg, delivery => 'Standard'});
is_deeply([map { "$_->{to}|$_->{from}" } nodes_of($id)], ['solo@rcpt.test|'], 'to scalar, null sender');

$id = $spool->send_mail(to => ['a@rcpt.test', 'b@rcpt.test'], from => 'x@sender.test',
                        message => ["Subject: lines", "", "body"], delivery => 'Whatever');
is_deeply([map { $_->{to} } nodes_of($id)], ['a@rcpt.test', 'b@rcpt.test'], 'array of lines, to list');
like(slurp("$spool_dir/0/" . (nodes_of($id))[0]{name}), qr/\n\nbody\n\z/, 'lines joined');

{
    package My::Message;
    sub new { bless { text => $_[1] }, $_[0] }
    sub as_string { $_[0]{text} }
}
$id = $spool->send_mail(message => My::Message->new($msg), to => 'obj@rcpt.test');
my @obj = nodes_of($id);
is(scalar(@obj), 1, 'object with as_string');

open(my $fh, '<', \$msg) or die;
$id = $spool->send_mail(filehandle => $fh, to => 'fh@rcpt.test');
is((nodes_of($id))[0]{to}, 'fh@rcpt.test', 'filehandle');

open(my $out, '>', "$dir/message.eml") or die;
print $out $msg;
close $out;
{
    # A function call (no object) finds the spool as the mailspool command does.
    local $ENV{MAILSPOOL_SPOOL} = $spool_dir;
    $id = send_mail({message => $msg, to => 'func@rcpt.test'});
}
is((nodes_of($id))[0]{to}, 'func@rcpt.test', 'exported send_mail works as a function');
$id = Mail::Spool->new(dequeue_dir => $spool_dir)->send_mail(filename => "$dir/message.eml", to => 'file@rcpt.test');
is((nodes_of($id))[0]{to}, 'file@rcpt.test', 'filename');

{
    # 0.50's package variable names the spool of objects that do not.
    local $Mail::Spool::DEQUEUE_DIR = $spool_dir;
    my $s = Mail::Spool->new;
    is($s->dequeue_dir, $spool_dir, '$DEQUEUE_DIR is the default dequeue_dir');
    $id = $s->send_mail(message => $msg, to => 'pkgvar@rcpt.test');
    is((nodes_of($id))[0]{to}, 'pkgvar@rcpt.test', 'queued into $DEQUEUE_DIR');
}

# A chosen id is used, and refused once queued.
$id = $spool->send_mail(message => $msg, to => 'id@rcpt.test', id => 'PerlId1');
is($id, 'PerlId1', 'id argument used');
my $before = () = nodes();
ok(!eval { $spool->send_mail(message => $msg, to => 'id2@rcpt.test', id => 'PerlId1'); 1 }, 'id in use refused');
like($@, qr/^IdInUse: /, 'error kind in $@');
is($Mail::Spool::EXIT_CODE, 65, 'exit code');

# Refusals leave nothing behind.
ok(!eval { $spool->send_mail(message => $msg, to => 'not an address'); 1 }, 'bad address refused');
is($Mail::Spool::ERROR_KIND, 'BadAddress', 'kind BadAddress');
ok(!eval { $spool->send_mail(message => "Subject: x\n\nno one\n"); 1 }, 'no recipients refused');
is($Mail::Spool::ERROR_KIND, 'NoRecipients', 'kind NoRecipients');
ok(!eval { $spool->send_mail(filename => "$dir/missing.eml", to => 'x@rcpt.test'); 1 }, 'missing file refused');
like($@, qr/doesn't exist and thus cannot be sent/, "0.50's message for a missing file");
is(scalar(() = nodes()), $before, 'refused messages left no node');
opendir(my $tmp, "$spool_dir/tmp") or die;
is_deeply([grep { !/^\.\.?$/ } readdir $tmp], [], 'nothing left in tmp/');

# The listing (a mailspool addition) sees what was queued.
my @q = $spool->queue;
is(scalar(@q), scalar(() = nodes()), 'queue lists every node');
ok((grep { $_->{id} eq 'PerlId1' && $_->{to} eq 'id@rcpt.test' && $_->{tier} == 0 } @q), 'queue entry fields');

# A forked child queues through its own handle.
my $pid = fork // die;
if (!$pid) {
    my $ok = eval { $spool->send_mail(message => $msg, to => 'child@rcpt.test', id => 'ChildId'); 1 };
    exit($ok ? 0 : 1);
}
waitpid($pid, 0);
is($?, 0, 'child sent');
is((nodes_of('ChildId'))[0]{to}, 'child@rcpt.test', 'child node');

# A batch (a mailspool addition): each message whole or not at all.
my ($ids, $errors) = $spool->send_many([$msg, "Subject: nobody\n\nx\n", "To: many\@rcpt.test\n\nm\n"]);
ok(defined $ids->[0] && !defined $ids->[1] && defined $ids->[2], 'send_many: ids of the queued ones');
like($errors->[1], qr/^NoRecipients: message 1: no recipients/, 'send_many: the refusal named');
is(scalar(() = nodes_of($ids->[0])), 3, 'send_many: first message has its nodes');
is((nodes_of($ids->[2]))[0]{to}, 'many@rcpt.test', 'send_many: third message queued');

done_testing;
