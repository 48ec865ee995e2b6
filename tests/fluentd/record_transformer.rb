# Evaluates record_transformer <record> maps the way Fluentd 1.19's RubyPlaceholderExpander does
# (enable_ruby true, auto_typecast true), so the ECS mapping's Ruby expressions run for real in
# tests without a Fluentd install. Input (stdin, JSON): {tag, time, record, filters: [{map,
# remove_keys}]}; output (stdout, JSON): the record after every filter in order.
require "json"
require "time"
# Fluentd has both loaded when it evaluates expressions (document-id.conf uses them).
require "digest"
require "msgpack"

# Like Fluentd's cleanroom: the expression sees only tag, time, record, tag_parts, tag_prefix,
# tag_suffix and hostname, not the helper's own methods.
class Cleanroom
  def run(__code__, tag, time, record, tag_parts, tag_prefix, tag_suffix, hostname)
    instance_eval(__code__)
  end
end

def to_ruby(value)
  # A value that is exactly one ${...} keeps its Ruby type (auto_typecast); anything else is an
  # interpolated string.
  if value.scan("${").size == 1 && value.start_with?("${") && value.end_with?("}")
    value[2..-2]
  else
    "%Q[" + value.gsub("${", '#{') + "]"
  end
end

input = JSON.parse($stdin.read)
tag = input.fetch("tag")
parts = tag.split(".")
prefixes = (1..parts.size).map { |n| parts.first(n).join(".") }
suffixes = (1..parts.size).map { |n| parts.last(n).join(".") }
time = Time.at(Rational(input.fetch("time").to_s))
record = input.fetch("record")
input.fetch("filters").each do |filter|
  out = record.dup
  filter.fetch("map").each do |key, value|
    out[key] = Cleanroom.new.run(to_ruby(value), tag, time, record, parts, prefixes, suffixes, "fluentd-test")
  end
  filter.fetch("remove_keys").each { |key| out.delete(key) }
  record = out
end
puts JSON.generate(record)
