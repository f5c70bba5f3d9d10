package Mail::Spool;

# Mail::Spool 0.50's interface for the programs written against it, over mailspool's C
# ABI (libmailspool) with FFI::Platypus: the same new() and send_mail() arguments, the
# message committed by mailspool (one node per recipient in the 0.50 layout, durable
# before send_mail returns, Bcc removed, a fresh id). 0.50's daemon side runs the
# `mailspool` program: daemon() becomes `mailspool daemon`, dequeue() runs one
# `mailspool queue run`, create_dequeue_dirs() lays the spool out; the node-level
# internals (list_spool_handles, Mail::Spool::Handle/Node) are not offered.

use strict;
use warnings;

use Carp ();
use Exporter 'import';
use FFI::Platypus 1.00;
use FFI::Platypus::Buffer qw(scalar_to_buffer);

our @EXPORT_OK = qw(send_mail dequeue daemon create_dequeue_dirs);
our $VERSION = '0.51';

# What the last failed send_mail said, beside the message in $@: its kind (SpoolFull,
# BadAddress, ...; see mailspool.h) and sendmail's exit code (75 = try again later).
our $ERROR_KIND = '';
# 0.50's package default for dequeue_dir, read when an object has none. Unset here: the
# spool is then found as the `mailspool` command finds it.
our $DEQUEUE_DIR;
our $EXIT_CODE  = 0;

my %DELIVERY = (Deferred => 0, Standard => 0, Interactive => 1, Background => 2);

my $ffi = FFI::Platypus->new(api => 1);
$ffi->lib(_library());
$ffi->attach(mailspool_open        => ['string', 'string', 'opaque*'] => 'int');
$ffi->attach(mailspool_close       => ['opaque'] => 'void');
$ffi->attach(mailspool_free        => ['opaque'] => 'void');
$ffi->attach(mailspool_last_error  => [] => 'string');
$ffi->attach(mailspool_last_exit_code => [] => 'int');
$ffi->attach(mailspool_status_name => ['int'] => 'string');
$ffi->attach(mailspool_queue_json  => ['opaque', 'opaque*'] => 'int');
$ffi->attach(mailspool_send_mail =>
    ['opaque', 'opaque', 'size_t', 'string[]', 'size_t', 'string', 'int', 'string', 'opaque*']
    => 'int');
$ffi->attach(mailspool_send_many =>
    ['opaque', 'opaque[]', 'size_t[]', 'size_t', 'string[]', 'size_t', 'string', 'sint32[]', 'opaque[]']
    => 'int');
$ffi->attach(mailspool_send_file =>
    ['opaque', 'string', 'string[]', 'size_t', 'string', 'int', 'string', 'opaque*'] => 'int');

# libmailspool: $MAILSPOOL_LIB when set, else where the system keeps libraries.
sub _library {
    return $ENV{MAILSPOOL_LIB} if $ENV{MAILSPOOL_LIB};
    require FFI::CheckLib;
    return FFI::CheckLib::find_lib_or_die(lib => 'mailspool');
}

# new(%args) or new(\%args), as 0.50. mailspool reads: dequeue_dir (the spool
# directory, or a postgresql:// URL) and config (a mailspool.toml). Without them the
# spool is found as the `mailspool` command finds it ($MAILSPOOL_SPOOL,
# $MAILSPOOL_CONFIG, the configuration files, the default). 0.50's other properties
# are kept as accessors but belong to `mailspool daemon`'s configuration.
sub new {
    my $type  = shift;
    my $class = ref($type) || $type || __PACKAGE__;
    my $self  = @_ && ref($_[0]) ? {%{ shift() }} : {@_};
    return bless $self, $class;
}

for my $property (qw(dequeue_dir dequeue_periods dequeue_priority dequeue_timeout
                     max_dequeue_processes max_connection_time usage_log config)) {
    no strict 'refs';
    *{$property} = sub {
        my $self = shift;
        my $old  = $self->{$property};
        $old = $DEQUEUE_DIR if $property eq 'dequeue_dir' && !defined $old;
        if (@_) {
            $self->{$property} = shift;
            $self->_close;    # the spool may have moved
        }
        return $old;
    };
}

# send_mail(%args), send_mail(\%args), as a method or an exported function. Arguments as
# 0.50: to (one address or an array ref; from To/Cc/Bcc when absent), from (from the
# From header when absent; '' or '<>' is the null sender), message (a string, a
# string ref, an array ref of lines, or an object with as_string, such as
# Mail::Internet or MIME::Entity), filehandle, filename, delivery (Deferred or Standard,
# Interactive, Background; anything else is Deferred, as 0.50), timeout (ignored: the
# configuration's timeouts apply) and id. Returns the message id (a true value); dies
# with the reason otherwise, setting $Mail::Spool::ERROR_KIND and $EXIT_CODE.
sub send_mail {
    my $self = _invocant(\@_);
    my $args = @_ && ref($_[0]) eq 'HASH' ? shift : {@_};
    ($ERROR_KIND, $EXIT_CODE) = ('', 0);

    my @to = _recipients($args->{to});
    my $from = $args->{from};
    my $delivery = $DELIVERY{ $args->{delivery} // 'Deferred' } // 0;
    my $id = $args->{id};
    my $handle = $self->_handle;

    my $id_ptr;
    my $rc;
    my $message = _message_text($args);
    if (defined $message) {
        utf8::encode($message) if utf8::is_utf8($message);
        my ($ptr, $len) = scalar_to_buffer($message);
        $rc = mailspool_send_mail($handle, $ptr, $len, \@to, scalar(@to),
                                  $from, $delivery, $id, \$id_ptr);
    } elsif (defined $args->{filename}) {
        my $file = $args->{filename};
        _fail('NoInput', 66, "File \"$file\" doesn't exist and thus cannot be sent")
            unless -e $file;
        $rc = mailspool_send_file($handle, $file, \@to, scalar(@to),
                                  $from, $delivery, $id, \$id_ptr);
    } else {
        _fail('InvalidArgument', 64, "No clue what to do (I need a message or a filename)!");
    }
    if ($rc != 0) {
        _fail(mailspool_status_name($rc), mailspool_last_exit_code(), mailspool_last_error());
    }
    my $queued = $ffi->cast('opaque' => 'string', $id_ptr);
    mailspool_free($id_ptr);
    return $queued;
}

# An object method, a class method or a plain function, as 0.50's subs were called:
# the object (shifted off @$args) or the process's default one.
sub _invocant {
    my $args = shift;
    return shift @$args if @$args && ref($args->[0]) && eval { $args->[0]->isa(__PACKAGE__) };
    shift @$args if @$args && !ref($args->[0]) && $args->[0] eq __PACKAGE__;
    return _default();
}

# create_dequeue_dirs(), as a method or a function: make the spool directory and its
# tiers (and tmp/), mode 0700, as opening it for intake does; dies with the reason.
sub create_dequeue_dirs {
    my $self = _invocant(\@_);
    $self->_handle;
    return 1;
}

# daemon(): 0.50 ran its own dequeuer; this runs `mailspool daemon` in this process's
# place (exec: it does not return), on this object's spool and config. It stays in the
# foreground (run it under systemd, or with `&`), unlike 0.50's Net::Server setsid.
# The program is $ENV{MAILSPOOL_BIN}, else `mailspool` on the PATH.
sub daemon {
    my $self = _invocant(\@_);
    $self->create_dequeue_dirs;
    $self->_close;
    my ($bin, %env) = $self->_program;
    local @ENV{keys %env} = values %env;
    exec { $bin } $bin, 'daemon';
    _fail('Unavailable', 69, "cannot run $bin daemon: $!");
}

# dequeue(): one delivery pass over what is due (`mailspool queue run`), as 0.50's
# dequeue was one pass. Returns 1; dies when the pass could not run.
sub dequeue {
    my $self = _invocant(\@_);
    my ($bin, %env) = $self->_program;
    local @ENV{keys %env} = values %env;
    system { $bin } $bin, 'queue', 'run';
    _fail('Unavailable', 69, "cannot run $bin queue run: $!") if $? == -1;
    _fail('Failed', $? >> 8, "$bin queue run exited with " . ($? >> 8)) if $?;
    return 1;
}

# The mailspool program and the environment that points it at this object's spool.
sub _program {
    my $self = shift;
    my %env;
    my $dir = $self->{dequeue_dir} // $DEQUEUE_DIR;
    $env{MAILSPOOL_SPOOL}  = $dir if defined $dir;
    $env{MAILSPOOL_CONFIG} = $self->{config} if defined $self->{config};
    return ($ENV{MAILSPOOL_BIN} || 'mailspool', %env);
}

# The node-level internals of 0.50's dequeuer have no counterpart: say so.
for my $method (qw(list_spool_handles mail_spool_handle mail_spool_node)) {
    no strict 'refs';
    *{$method} = sub {
        Carp::croak("Mail::Spool::$method is not offered by mailspool's Mail::Spool: "
            . "dequeue() runs a delivery pass, daemon() runs `mailspool daemon`");
    };
}

# send_many(\@messages, to => ..., from => ...): a mailspool addition. Queues every
# message (each a string, as `message` above) with shared disk flushes, far faster than a
# send_mail each. Returns, in order, the id of each message or undef for one that was
# refused; in list context also the reasons ("Kind: reason", undef where queued).
sub send_many {
    my ($self, $messages, %args) = @_;
    my @to = _recipients($args{to});
    my @texts = map { my $t = _message_text({message => $_}); utf8::encode($t) if utf8::is_utf8($t); $t } @$messages;
    my (@ptrs, @lens);
    for (@texts) { my ($p, $n) = scalar_to_buffer($_); push @ptrs, $p; push @lens, $n; }
    my $n = @texts;
    my @statuses = (0) x $n;
    my @id_ptrs = (undef) x $n;
    ($ERROR_KIND, $EXIT_CODE) = ('', 0);
    my $rc = mailspool_send_many($self->_handle, \@ptrs, \@lens, $n, \@to, scalar(@to),
                                 $args{from}, \@statuses, \@id_ptrs);
    my (@ids, @errors);
    for my $i (0 .. $n - 1) {
        if ($id_ptrs[$i]) {
            push @ids, $ffi->cast('opaque' => 'string', $id_ptrs[$i]);
            mailspool_free($id_ptrs[$i]);
            push @errors, undef;
        } else {
            push @ids, undef;
            push @errors, mailspool_status_name($statuses[$i]);
        }
    }
    if ($rc != 0) {
        ($ERROR_KIND, $EXIT_CODE) = (mailspool_status_name($rc), mailspool_last_exit_code());
        # The library names the first failure; the others are known by kind.
        my ($first) = grep { defined $errors[$_] } 0 .. $#errors;
        $errors[$first] .= ': ' . mailspool_last_error() if defined $first;
    }
    return wantarray ? (\@ids, \@errors) : \@ids;
}

# The object a function call (or a class method call) uses: one per process.
my $default;
sub _default { return $default //= __PACKAGE__->new }

# The queue, one hash ref per node (recipient): id, node, to, from, tier, queued_at,
# due_at, size, held, last_error. A mailspool addition; 0.50 had no listing.
sub queue {
    my $self = shift;
    require JSON::PP;
    my $json_ptr;
    my $rc = mailspool_queue_json($self->_handle, \$json_ptr);
    _fail(mailspool_status_name($rc), mailspool_last_exit_code(), mailspool_last_error())
        if $rc != 0;
    my $json = $ffi->cast('opaque' => 'string', $json_ptr);
    mailspool_free($json_ptr);
    return @{ JSON::PP->new->utf8->decode($json) };
}

# The message as bytes from message or filehandle; undef when only a filename is given.
sub _message_text {
    my $args = shift;
    my $m = $args->{message};
    if (!defined $m) {
        my $fh = $args->{filehandle} or return undef;
        local $/;
        my $text = <$fh>;
        return $text // '';
    }
    return $$m if ref($m) eq 'SCALAR';
    return join('', map { /\n\z/ ? $_ : "$_\n" } @$m) if ref($m) eq 'ARRAY';
    if (ref($m) && eval { $m->can('as_string') }) {
        return $m->as_string;
    }
    Carp::croak("Mail::Spool: message must be a string, a reference to one, an array "
        . "of lines or an object with as_string") if ref($m);
    return $m;
}

# 0.50's `to`: one address, an array ref of them, or none (from the headers).
sub _recipients {
    my $to = shift;
    return !defined $to ? () : ref($to) eq 'ARRAY' ? @$to : ($to);
}

sub _fail {
    my ($kind, $exit, $message) = @_;
    ($ERROR_KIND, $EXIT_CODE) = ($kind, $exit);
    die "$kind: $message\n";
}

# The library's handle for this object's spool: opened again in a forked child, and when
# the spool it names has changed ($DEQUEUE_DIR is read at each call, as 0.50 read it).
sub _handle {
    my $self = shift;
    my $dir = $self->{dequeue_dir} // $DEQUEUE_DIR;
    my $key = join("\0", $dir // '', $self->{config} // '');
    return $self->{_mailspool}
        if $self->{_mailspool} && ($self->{_pid} // 0) == $$ && $self->{_key} eq $key;
    $self->_close;
    my $h;
    my $rc = mailspool_open($self->{config}, $dir, \$h);
    _fail(mailspool_status_name($rc), mailspool_last_exit_code(), mailspool_last_error())
        if $rc != 0;
    @$self{qw(_mailspool _pid _key)} = ($h, $$, $key);
    return $h;
}

sub _close {
    my $self = shift;
    my $h = delete $self->{_mailspool};
    # A forked child leaves its parent's handle alone (the parent closes it).
    mailspool_close($h) if $h && ($self->{_pid} // 0) == $$;
    delete $self->{_pid};
}

sub DESTROY { $_[0]->_close }

1;

__END__

=head1 NAME

Mail::Spool - Mail::Spool 0.50's send_mail, committed by mailspool

=head1 SYNOPSIS

  use Mail::Spool;
  my $spool = Mail::Spool->new(dequeue_dir => '/var/spool/mailspool');
  eval { $spool->send_mail(to => 'anybody@example.org', from => 'me@example.com',
                           message => $text, delivery => 'Deferred') };
  die "Something went wrong [$@]" if $@;

  # or, as 0.50 allowed
  use Mail::Spool qw(send_mail);
  send_mail({to => [...], filename => '/path/to/message'});

=head1 DESCRIPTION

The arguments and behaviour of Mail::Spool 0.50's C<new> and C<send_mail> (see the
comments above each sub), written through libmailspool: the message is committed to
the spool (the 0.50 layout, or a database) before C<send_mail> returns, one node per
recipient, and C<mailspool daemon> delivers it. C<daemon> runs C<mailspool daemon> in
the process's place (in the foreground), C<dequeue> runs one C<mailspool queue run>,
and C<create_dequeue_dirs> lays the spool out; set C<MAILSPOOL_BIN> when the program is
not on the C<PATH>. Differences from 0.50, on purpose: the
id never comes from a C<Received:> header the sender wrote (an id given as C<id> is
refused when it is already queued); C<Bcc> is removed; C<timeout> is not used; errors
die with C<Kind: reason>. Set C<MAILSPOOL_LIB> to use a libmailspool.so that is not
installed where the system finds libraries.

=cut
